"""Test a trained checkpoint on its held-out set, or on other data.

    python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python src/eval.py ckpt_path=... data.path=/data/aclImdb
"""

import hydra

from bertgpt.pipeline import cli, evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval.yaml")
@cli
def main(cfg):
    evaluate(cfg)


if __name__ == "__main__":
    main()
