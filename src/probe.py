"""Linear probes on every layer of a frozen model: how much of the task each layer already holds.

    python src/probe.py checkpoint=all-minilm-l6-v2 data.train_size=2000 data.val_size=500
    python src/probe.py checkpoint=smollm2-135m task=pos data.train_size=2000 data.test_size=500
    python src/probe.py checkpoint=logs/pretrain/runs/<run>/export          # our pretraining's export
"""

from bertgpt.entries import probe

if __name__ == "__main__":
    probe()
