"""Fine-tune a backbone on IMDB sentiment.

    python src/train.py model=bert trainer.devices=1
    python src/train.py model=gpt data.train_size=2000
    python src/train.py -m hparams_search=optuna        # what `make sweep` runs
"""

from bertgpt.entries import train

if __name__ == "__main__":
    train()
