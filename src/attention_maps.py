"""Attention maps of one short review: every head of each model, and the attention its pooled token pays.

    python src/attention_maps.py                                    # the bundled MiniLM and SmolLM2: reports/attention/
    python src/attention_maps.py text="Dull and far too long."
    python src/attention_maps.py models=[all-minilm-l6-v2] ours=true    # our bert.py on the same weights
    python src/attention_maps.py models=[logs/train/runs/<run>/checkpoints/last.ckpt]   # a fine-tuned model
"""

import sys

import hydra

from bertgpt.experiments.attention_maps import main as attention_maps
from bertgpt.pipeline import cli, verbatim_text_argument


@hydra.main(version_base="1.3", config_path="../conf", config_name="attention_maps.yaml")
@cli
def main(cfg):
    attention_maps(cfg)


if __name__ == "__main__":
    sys.argv = verbatim_text_argument(sys.argv)
    main()
