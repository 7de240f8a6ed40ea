"""Callbacks Lightning doesn't ship: throughput, a confusion-matrix image, and the RNG state in checkpoints."""

from __future__ import annotations

import logging
import random
import resource
import sys
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held: allocated CUDA memory on a GPU, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class ThroughputLogger(L.Callback):
    """Logs `train/samples_per_sec`, `train/tokens_per_sec` (non-pad tokens), `train/epoch_time_s` and
    `train/peak_memory_mb` (see `peak_memory_mb`).

    Validation time inside the epoch is excluded, data loading is not: it is part of what training costs.
    Under DDP the counts are summed over ranks, so the figures are for the whole job.
    """

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.samples, self.tokens, self.paused = 0, 0, 0.0
        self.start = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch["labels"])
        self.tokens += batch["attention_mask"].sum()  # stays a tensor: reading it every step would stall a GPU

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if hasattr(self, "start"):
            self.paused += time.perf_counter() - self.val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.start - self.paused
        pl_module.log("train/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        pl_module.log("train/samples_per_sec", self.samples / seconds, sync_dist=True, reduce_fx="sum")
        pl_module.log("train/tokens_per_sec", int(self.tokens) / seconds, sync_dist=True, reduce_fx="sum")
        pl_module.log("train/peak_memory_mb", peak_memory_mb(pl_module.device), sync_dist=True, reduce_fx="max")


class RunThroughput(ThroughputLogger):
    """ThroughputLogger counting over the whole run, not per epoch (a max_steps budget ends mid-epoch, and
    a small corpus makes many short ones), and blocks rather than reviews: every token of a block is real.
    `train/epoch_time_s` is then the training time so far."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # the counts start once

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch)
        self.tokens += batch.numel()


class ProgressLog(L.Callback):
    """Plain progress lines where no progress bar shows: output to a file, CI, nohup (`make train > train.log`).

    Lightning's bar draws nothing when stdout is not a terminal, so a long epoch would be silent. Every
    `every_s` seconds (and every `every_n_steps` steps, if set) this logs step / total, the loss, samples/s and
    the time left. In a terminal it stays quiet (`always=true` logs there too).
    """

    def __init__(self, every_s: float = 30.0, every_n_steps: int | None = None, always: bool = False):
        self.every_s, self.every_n_steps, self.always = every_s, every_n_steps, always

    def on_train_start(self, trainer, pl_module) -> None:
        self.active = trainer.is_global_zero and (self.always or not sys.stdout.isatty())
        self.start = self.last = time.perf_counter()
        self.first_step, self.samples = trainer.global_step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        self.samples += len(batch["input_ids"]) if isinstance(batch, dict) else len(batch)
        now, step = time.perf_counter(), trainer.global_step
        due = now - self.last >= self.every_s or (self.every_n_steps and step % self.every_n_steps == 0)
        if not due:
            return
        self.last = now
        total = trainer.estimated_stepping_batches
        elapsed = now - self.start
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        left = (total - step) / rate if rate > 0 else float("nan")
        loss = trainer.callback_metrics.get("train/loss")
        log.info("step %d/%d (epoch %d/%d)  loss %s  %.1f samples/s  elapsed %s  left ~%s", step, total, trainer.current_epoch + 1,
                 trainer.max_epochs, f"{float(loss):.4f}" if loss is not None else "-", self.samples / elapsed, clock(elapsed), clock(left))


def clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class ConfusionMatrixLogger(L.Callback):
    """At the end of each validation epoch, draws the (synced) confusion matrix of the labels into TensorBoard:
    the two sentiments, or the tags (rows normalised to recall, so that rare tags show). Above `max_labels`
    (the full Brown tagset has hundreds) a picture would be unreadable, and none is drawn."""

    def __init__(self, max_labels: int = 40):
        self.max_labels = max_labels

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        matrix = pl_module.val_confusion.compute().cpu()  # (n, n): rows true label, columns predicted
        names = list(pl_module.hparams.labels)
        if trainer.sanity_checking or not trainer.is_global_zero or len(names) > self.max_labels:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/confusion_matrix", confusion_figure(matrix, names), trainer.global_step)


def confusion_figure(matrix: torch.Tensor, names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    counts = n <= 4  # two sentiments: the counts themselves; tags: each row as shares of its true tag
    shown = matrix.float() if counts else matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    side = max(3.2, 0.45 * n + 1.5)
    fig, ax = plt.subplots(figsize=(side + 0.4, side), dpi=100)
    ax.imshow(shown.numpy(), cmap="Blues", vmin=0)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                text = str(int(matrix[i, j])) if counts else f"{shown[i, j]:.2f}".lstrip("0") if shown[i, j] >= 0.005 else ""
                ax.text(j, i, text, ha="center", va="center", color="black", fontsize=8 if n > 4 else 10)
    ax.set_xticks(range(n), names, rotation=90 if n > 4 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


class StepCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint every `every_n_train_steps`, except on an epoch's last batch.

    Validation and the epoch-end checkpoint follow that batch. Lightning resumes a checkpoint taken there at the
    next epoch, so a run killed during that validation would lose it for good (and the epoch's best checkpoint);
    from the step checkpoint before it, the resumed run replays a few batches and then validates.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class RNGState(L.Callback):
    """Saves the torch / numpy / Python RNG states in every checkpoint and restores them on resume.

    Lightning does not checkpoint them, so a resumed run would draw other dropout masks than the run it continues.
    They are put back just before the first training batch after the restore, the point they were taken at,
    so nothing that runs before it (the sanity check, the model and data setup) can shift them.
    """

    def __init__(self):
        self.pending: dict | None = None

    def state_dict(self) -> dict:
        # Tensors, ints and tuples only: Lightning loads checkpoints with torch.load(weights_only=True).
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
