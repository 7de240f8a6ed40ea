"""Callbacks Lightning doesn't ship: epoch throughput in samples and real tokens, and a confusion-matrix image."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class ThroughputLogger(L.Callback):
    """Logs `train/samples_per_sec`, `train/tokens_per_sec` (non-pad tokens) and `train/epoch_time_s`.

    Validation time inside the epoch is excluded, data loading is not: it is part of what training costs.
    Under DDP the counts are summed over ranks, so the figures are for the whole job.
    """

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.samples, self.tokens, self.paused = 0, 0, 0.0
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch["labels"])
        self.tokens += int(batch["attention_mask"].sum())

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if hasattr(self, "start"):
            self.paused += time.perf_counter() - self.val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.start - self.paused
        pl_module.log("train/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        pl_module.log("train/samples_per_sec", self.samples / seconds, sync_dist=True, reduce_fx="sum")
        pl_module.log("train/tokens_per_sec", self.tokens / seconds, sync_dist=True, reduce_fx="sum")


class ConfusionMatrixLogger(L.Callback):
    """At the end of each validation epoch, draws the (synced) confusion matrix into TensorBoard."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        matrix = pl_module.val_confusion.compute().cpu()  # (2, 2): rows true label, columns predicted
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/confusion_matrix", confusion_figure(matrix), trainer.global_step)


def confusion_figure(matrix: torch.Tensor, names: tuple[str, str] = ("negative", "positive")):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    ax.imshow(matrix.numpy(), cmap="Blues")
    for (i, j), value in zip([(i, j) for i in range(2) for j in range(2)], matrix.flatten().tolist()):
        ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig
