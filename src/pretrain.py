"""Pretrain our BERT (masked LM) or our GPT (next token) from random weights on unlabeled reviews.

    python src/pretrain.py objective=mlm
    python src/pretrain.py objective=clm trainer.max_steps=500 data.max_docs=2000
    python src/train.py model=bert_scratch model.net.checkpoint=logs/pretrain/runs/<run>/export
"""

import os
import sys
from pathlib import Path

import hydra

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from sentiment.pipeline import cli  # noqa: E402  (after PROJECT_ROOT: the configs read it)
from sentiment.pretraining import check_objective_argument, pretrain  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain.yaml")
@cli
def main(cfg):
    return pretrain(cfg)


if __name__ == "__main__":
    check_objective_argument(sys.argv[1:], CONF / "objective")
    main()
