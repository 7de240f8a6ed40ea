"""Classify reviews with a trained checkpoint: prints label, probability and text, one line each.

    python src/predict.py ckpt_path=... text="A wonderful, moving film."
    python src/predict.py ckpt_path=... file=reviews.txt      # one review per line
"""

import sys

import hydra

from bertgpt.pipeline import cli, predict, verbatim_text_argument


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict.yaml")
@cli
def main(cfg):
    predict(cfg)


if __name__ == "__main__":
    sys.argv = verbatim_text_argument(sys.argv)
    main()
