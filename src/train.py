"""Fine-tune a backbone on IMDB sentiment.

    python src/train.py model=bert trainer.devices=1
    python src/train.py model=gpt data.train_size=2000
    python src/train.py -m hparams_search=optuna        # what `make sweep` runs
"""

import hydra

from bertgpt.pipeline import cli, train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
@cli
def main(cfg):
    return train(cfg)


if __name__ == "__main__":
    main()
