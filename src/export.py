"""Write a trained checkpoint as a Hugging Face folder: config.json, model.safetensors, the tokenizer, a model card.

    python src/export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt out=exports/imdb-bert
    python src/export.py ckpt_path=... out=exports/imdb-bert overwrite=true   # replace an existing export
"""

import hydra

from bertgpt.export import export
from bertgpt.pipeline import cli


@hydra.main(version_base="1.3", config_path="../conf", config_name="export.yaml")
@cli
def main(cfg):
    export(cfg)


if __name__ == "__main__":
    main()
