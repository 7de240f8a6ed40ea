"""Classify reviews (task=sentiment) or tag sentences (task=pos) with a trained checkpoint, one line each.

    python src/predict.py ckpt_path=... text="A wonderful, moving film."
    python src/predict.py ckpt_path=... file=reviews.txt      # one review per line

Without Lightning or a run folder: see `bertgpt.entries.predict`.
"""

from bertgpt.entries import predict

if __name__ == "__main__":
    predict()
