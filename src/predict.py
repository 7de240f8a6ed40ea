"""Classify reviews with a trained checkpoint: prints label, probability and text, one line each.

    python src/predict.py ckpt_path=... text="A wonderful, moving film."
    python src/predict.py ckpt_path=... file=reviews.txt      # one review per line
"""

from bertgpt.entries import predict

if __name__ == "__main__":
    predict()
