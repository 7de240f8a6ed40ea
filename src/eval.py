"""Test a trained checkpoint on its held-out set, or on other data.

    python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python src/eval.py ckpt_path=... data.path=/data/aclImdb
"""

from bertgpt.entries import evaluate

if __name__ == "__main__":
    evaluate()
