"""Write a trained checkpoint as a Hugging Face folder: config.json, model.safetensors, the tokenizer, a model card.

    python src/export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt out=exports/imdb-bert
    python src/export.py ckpt_path=... out=exports/imdb-bert overwrite=true   # replace an existing export
"""

from bertgpt.entries import export

if __name__ == "__main__":
    export()
