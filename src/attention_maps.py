"""Attention maps of one short review: every head of each model, and the attention its pooled token pays.

    python src/attention_maps.py                                    # the bundled MiniLM and SmolLM2: reports/attention/
    python src/attention_maps.py text="Dull and far too long."
    python src/attention_maps.py models=[all-minilm-l6-v2] ours=true    # our bert.py on the same weights
    python src/attention_maps.py models=[logs/train/runs/<run>/checkpoints/last.ckpt]   # a fine-tuned model
"""

from bertgpt.entries import attention_maps

if __name__ == "__main__":
    attention_maps()
