"""Pretrain our BERT (masked LM) or our GPT (next token) from random weights on unlabeled reviews.

    python src/pretrain.py objective=mlm
    python src/pretrain.py objective=clm trainer.max_steps=500 data.max_docs=2000
    python src/train.py model=bert_scratch model.net.checkpoint=logs/pretrain/runs/<run>/export
"""

import sys

import hydra

from bertgpt import ROOT
from bertgpt.experiments.pretrain import check_objective_argument, pretrain
from bertgpt.pipeline import cli


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain.yaml")
@cli
def main(cfg):
    return pretrain(cfg)


if __name__ == "__main__":
    check_objective_argument(sys.argv[1:], ROOT / "conf" / "objective")
    main()
