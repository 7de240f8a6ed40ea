"""Test a trained checkpoint on its held-out set, or on other data.

    python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python src/eval.py ckpt_path=... data.path=/data/aclImdb
"""

import os
from pathlib import Path

import hydra

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from sentiment.pipeline import cli, evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval.yaml")
@cli
def main(cfg):
    evaluate(cfg)


if __name__ == "__main__":
    main()
