"""The commands: `python src/<name>.py` and the console scripts `bertgpt-<name>` (pyproject's [project.scripts])
both run these, so the two behave the same: one config folder, one error policy (`cli`), one argument handling.

    bertgpt-train model=bert trainer.devices=1        # = python src/train.py model=bert trainer.devices=1
    bertgpt-eval ckpt_path=...   bertgpt-predict ckpt_path=... text="..."   bertgpt-pretrain   bertgpt-compare

The configs come from the checkout's conf/ by absolute path: the scripts work from any folder.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from bertgpt import ROOT, pipeline
from bertgpt.cli import cli, verbatim_text_argument
from bertgpt.experiments import compare as comparison
from bertgpt.experiments import pretrain as pretraining

CONF = str(ROOT / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="train.yaml")
@cli
def train(cfg):
    return pipeline.train(cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval.yaml")
@cli
def evaluate(cfg):
    pipeline.evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="predict.yaml")
@cli
def _predict(cfg):
    pipeline.predict(cfg)


def predict():
    sys.argv = verbatim_text_argument(sys.argv)  # before Hydra parses it: a review holds commas, quotes, colons
    _predict()


@hydra.main(version_base="1.3", config_path=CONF, config_name="pretrain.yaml")
@cli
def _pretrain(cfg):
    return pretraining.pretrain(cfg)


def pretrain():
    pretraining.check_objective_argument(sys.argv[1:], ROOT / "conf" / "objective")
    _pretrain()


@hydra.main(version_base="1.3", config_path=CONF, config_name="compare.yaml")
def compare(cfg):
    comparison.main(cfg, Path(HydraConfig.get().runtime.output_dir))
