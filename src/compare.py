"""BERT vs GPT under one budget: every arm as its own src/train.py (and src/pretrain.py) run, then the report.

    python src/compare.py                                   # what `make compare` runs: reports/compare.md
    python src/compare.py compare.arms=[bert,bert_scratch]  # a subset of the arms
    python src/compare.py full=true                         # the whole data, on a GPU
    python src/compare.py report_only=logs/compare/runs/<date>   # rewrite the report of a finished compare
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from bertgpt.experiments.compare import main as compare


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare.yaml")
def main(cfg):
    compare(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
