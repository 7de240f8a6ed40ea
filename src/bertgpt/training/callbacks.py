"""Callbacks Lightning doesn't ship: throughput, progress lines, a confusion-matrix image, each validation's
predictions, the RNG state in checkpoints, a stop at a target accuracy, and a checkpoint-then-stop on SIGTERM / Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import resource
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bertgpt import host
from bertgpt.cli import clock
from bertgpt.errors import UserError
from bertgpt.files import write_text
from bertgpt.training.checkpoints import newest_checkpoint

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
    the time left, and after each validation its metrics. In a terminal it stays quiet (`always=true` logs there too).
    """

    def __init__(self, every_s: float = 30.0, every_n_steps: int | None = None, always: bool = False):
        self.every_s, self.every_n_steps, self.always = every_s, every_n_steps, always
        self.active = False  # logging only while a fit trains: not its sanity check, not a validate or test alone

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

    def on_train_end(self, trainer, pl_module) -> None:
        self.active = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.active:
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/") and v.numel() == 1}
        log.info("validation at step %d (epoch %d/%d): %s  elapsed %s", trainer.global_step, trainer.current_epoch + 1, trainer.max_epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), clock(time.perf_counter() - self.start))


class FreedMemoryLimit(L.Callback):
    """Stops keeping freed memory (`host.keep_freed_memory`) once this process's resident set passes `fraction`
    of the memory it may use (the machine's or its container's, shared by the processes of one node).

    The kept memory trains long sequences faster, but under glibc's malloc batches of changing widths fragment its
    heap, and the heap then only grows: over `experiment=best`'s three epochs at 512 tokens, to several times what
    the steps hold (docs/performance.md has the figures). Past the limit the run goes on with the allocator's own
    settings (`host.return_freed_memory`), which hand memory back, at the speed measured without the kept memory
    (docs/performance.md, "Memory"). Under mimalloc, the default where installed, the same steps stay far lower, and
    the limit is a safety net.
    """

    def __init__(self, fraction: float = 0.75):
        if not 0 < fraction <= 1:
            raise UserError(f"callbacks.freed_memory_limit.fraction must be in (0, 1], got {fraction}: the share of "
                            "the memory the run may use, e.g. callbacks.freed_memory_limit.fraction=0.5")
        self.fraction, self.limit = fraction, None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.available, self.processes = host.memory_limit_bytes(), trainer.num_devices
        self.limit = self.fraction * self.available / self.processes if self.available else None
        if host.freed_memory_kept() and self.limit and trainer.is_global_zero:
            log.info("Allocator %s: freed memory kept for the next step until the resident set passes %.1f GiB (%g of %.1f GiB)",
                     host.allocator(), self.limit / 2**30, self.fraction, self.available / 2**30)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.check()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.check()

    def check(self) -> None:
        if self.limit is None or not host.freed_memory_kept() or (resident := host.resident_bytes()) <= self.limit:
            return
        host.return_freed_memory()
        shared = f", over {self.processes} processes" if self.processes > 1 else ""
        log.info("resident memory %.1f GiB passed %.1f GiB (%g of the %.1f GiB this run may use%s): freed memory is "
                 "handed back to the system from now on, %.1f GiB of it now (the heap's pages fill again as they are "
                 "reused, but it grows little from here); long sequences train slower without it", resident / 2**30,
                 self.limit / 2**30, self.fraction, self.available / 2**30, shared, (resident - host.resident_bytes()) / 2**30)


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


class ValidationPredictions(L.Callback):
    """After each validation of the whole split, `dirpath/step_<global step>.json`: every held-out item's label and
    prediction in the split's order (the module's `val_predictions`), so that two runs, or two points of one
    run's curve, can be compared item by item (a paired bootstrap) rather than by their accuracies alone. The step
    is the optimizer steps taken (Lightning's `global_step`); TensorBoard logs the same validation one lower."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_validation_end(self, trainer, pl_module) -> None:
        predictions = getattr(pl_module, "val_predictions", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not predictions:
            return
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, **predictions}
        write_text(self.dirpath / f"step_{trainer.global_step:06d}.json", json.dumps(record) + "\n")


# An accuracy is a count over a float32 total: exactly 90% (2,250 of 2,500 reviews) reads 0.89999998, below the
# float 0.9. A reading this close to a target has reached it; the nearest other reading is a whole item away.
TARGET_TOLERANCE = 1e-6


def reached(value: float, target: float) -> bool:
    """Whether an accuracy `value` is at or above `target`, float32's rounding forgiven."""
    return value >= target - TARGET_TOLERANCE


class ReachTarget(EarlyStopping):
    """Lightning's EarlyStopping that stops at the first validation whose `monitor` has `reached` the
    `stopping_threshold` (mode max) or come down to it (mode min). Lightning's own compares strictly, so a run that
    read exactly 90.00% went on training."""

    def __init__(self, stopping_threshold: float, mode: str = "max", **kwargs):
        nudge = -TARGET_TOLERANCE if mode == "max" else TARGET_TOLERANCE
        super().__init__(stopping_threshold=stopping_threshold + nudge, mode=mode, **kwargs)


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


class GracefulStop(L.Callback):
    """On SIGTERM or a first Ctrl-C: finish the current step, checkpoint it, stop. `exit_on_signal` turns the stop
    into one line and the exit status 128 + signal (143, 130).

    Lightning's signal connector sets `trainer.received_sigterm` on SIGTERM; its loops then raise SIGTERMException
    (a SystemExit with status 0) after the current batch, having saved nothing. Here a first Ctrl-C sets the same
    flag (a second one raises KeyboardInterrupt at once), the ranks of a DDP run agree on it, and the
    `StepCheckpoint` saves at the end of the batch: the same point and files as its periodic checkpoints, which
    resume exactly. Not on an epoch's last batch (see `StepCheckpoint`): Lightning then stops in the validation
    that follows, and the newest checkpoint on disk is the one to resume from.
    """

    def __init__(self):
        self.signal: int | None = None  # what stopped the run
        self.forced = False  # a second Ctrl-C: stopped mid-step, nothing saved for it
        self.saved: str | None = None  # the checkpoint written on the signal

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning's connector took note of the handlers, so its teardown puts the user's SIGINT back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda signum, frame: self.on_sigint(trainer))

    def on_sigint(self, trainer) -> None:
        if self.signal is not None:
            self.forced = True
            raise KeyboardInterrupt  # Lightning's own handling: on_exception hooks, then it stops
        self.signal = signal.SIGINT
        print("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once).", file=sys.stderr, flush=True)
        trainer._signal_connector.received_sigterm = True  # the flag Lightning's loops stop on

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        requested = trainer.received_sigterm
        if trainer.world_size > 1:  # a signal may reach one rank only: all stop after the same batch
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        trainer._signal_connector.received_sigterm = True
        self.signal = trainer.strategy.broadcast(self.signal or signal.SIGTERM)  # rank 0's, for the exit status
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        for checkpointer in trainer.checkpoint_callbacks:
            if isinstance(checkpointer, StepCheckpoint) and not checkpointer._should_skip_saving_checkpoint(trainer):
                checkpointer._save_topk_checkpoint(trainer, checkpointer._monitor_candidates(trainer))  # rank 0 writes
                self.saved = checkpointer._last_checkpoint_saved

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):  # a second Ctrl-C, or one before training started
            self.signal = signal.SIGINT
        elif isinstance(exception, SIGTERMException) and self.signal is None:  # came after this batch's check
            self.signal = signal.SIGTERM

    def report(self, trainer) -> str:
        """One line: what stopped the run where, the checkpoint to resume from, and the command that does."""
        how = "stopped at once by a second Ctrl-C" if self.forced else f"stopped by {signal.Signals(self.signal).name}"
        folders = {Path(c.dirpath) for c in trainer.checkpoint_callbacks if c.dirpath}
        newest = max(filter(None, (newest_checkpoint(f, "*.ckpt") for f in folders)), key=lambda p: p.stat().st_mtime_ns, default=None)
        if self.saved:
            where = f"checkpoint {self.saved}"
        elif newest is None:
            return f"{how} at step {trainer.global_step}, before any checkpoint: nothing to resume. Start again: {train_command()}"
        else:  # stopped mid-step, in validation, or at an epoch's end: the epoch checkpoint may be of this step
            where = f"the newest checkpoint is {newest}"
        return f"{how} after step {trainer.global_step}: {where}. Resume: {train_command('ckpt_path=last')}"


def train_command(*extra: str) -> str:
    """The command line this run was started with (its Hydra overrides, ckpt_path dropped) plus `extra`."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ["..."]
    return shlex.join(["python", "src/train.py", *(o for o in overrides if not o.startswith("ckpt_path=")), *extra])


@contextlib.contextmanager
def exit_on_signal(trainer):
    """Around `trainer.fit`: a run that `GracefulStop` stopped prints its `report` and exits 128 + signal.

    Lightning ends such a fit with a SystemExit: SIGTERMException (status 0) or, after a KeyboardInterrupt,
    status 1; a run stopped by a signal must not look successful, nor like a crash.
    """
    stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    try:
        yield
    except SystemExit:
        if stop is None or stop.signal is None:
            raise
        rank_zero_only(print)(stop.report(trainer), file=sys.stderr, flush=True)
        raise SystemExit(128 + stop.signal) from None
