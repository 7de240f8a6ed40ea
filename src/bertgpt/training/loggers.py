"""Loggers that need an optional package: the package's absence is the user's to fix, so it says which extra."""

from __future__ import annotations

import importlib.util

from bertgpt.errors import UserError


def require(package: str, extra: str, option: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{option} needs the {package} package, which is not installed: pip install '.[{extra}]' (or pip install {package}).")


def mlflow(**options):
    require("mlflow", "mlflow", "logger=mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(**options)


def wandb(**options):
    require("wandb", "wandb", "logger=wandb")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(**options)
