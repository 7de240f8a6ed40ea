"""Fine-tune a backbone on IMDB sentiment.

    python src/train.py model=bert trainer.devices=1
    python src/train.py model=gpt data.train_size=2000
    python src/train.py -m hparams_search=optuna        # what `make sweep` runs
"""

import os
from pathlib import Path

import hydra

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from sentiment.pipeline import cli, train  # noqa: E402  (after PROJECT_ROOT: the configs read it)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
@cli
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    main()
