"""What the entry scripts do, kept out of them: build from config, train, test, evaluate, predict."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bertgpt.data import tokenize
from bertgpt.data.reviews import IMDBDataModule
from bertgpt.errors import TrainingDiverged, UserError
from bertgpt.host import keep_freed_memory
from bertgpt.models.library import load_tokenizer
from bertgpt.tasks.classification import SentimentClassifier, count_parameters
from bertgpt.training.callbacks import exit_on_signal
from bertgpt.training.checkpoints import (
    ensure_writable,
    load_checkpoint_safely,
    newest_checkpoint,
    resume_checkpoint,
)

log = logging.getLogger(__name__)


def supports_bf16() -> bool:
    """bf16 autocast pays on GPUs that have it and on CPUs with AVX-512 BF16 / AMX (2.3x here); else fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def best_precision() -> str:
    """Lightning's precision for this machine: `${best_precision:}` in conf/trainer."""
    return "bf16-mixed" if supports_bf16() else "32-true"


# Lightning warns that a mid-epoch resume replays the epoch from its first batch; ours does not (ResumableSampler).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
OmegaConf.register_new_resolver("best_precision", best_precision, replace=True)
# On a GPU, worker processes and pinned memory overlap batch assembly and the copy with the step. On a CPU the
# workers would take the cores the step needs, and the tokens are cached, so the main process batches.
OmegaConf.register_new_resolver("loader_workers", lambda: min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0, replace=True)
OmegaConf.register_new_resolver("pad_multiple", lambda: 64 if torch.cuda.is_available() else 1, replace=True)
OmegaConf.register_new_resolver("on_gpu", lambda: torch.cuda.is_available(), replace=True)


def cli(task):
    """Wraps an entry point: a UserError prints one line and exits 2 (the traceback only with HYDRA_FULL_ERROR=1).
    The run keeps the memory it frees for its next step (`host.keep_freed_memory`)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        keep_freed_memory()
        try:
            return task(cfg)
        except Exception as err:
            cause = user_error(err)
            if cause is None:
                raise
            discard_run_dir(HydraConfig.get().runtime.output_dir)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: Hydra's instantiate wraps what a constructor raises.

    An option the constructor does not take (`+trainer.fooo=1`) is a user error too: Hydra reports it as a
    TypeError inside an InstantiationException, which would otherwise exit 1 and leave the run folder behind.
    """
    while err is not None and not isinstance(err, UserError):
        cause = err.__cause__
        if isinstance(err, InstantiationException) and isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            key = re.search(r"full_key: (\S+)", str(err))
            return UserError(f"{key.group(1) if key else 'config'}: {cause}. Fix its spelling or drop it (python src/train.py --cfg job prints every option).")
        err = cause
    return err


def instantiate_list(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig, **kwargs) -> L.Trainer:
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = instantiate_list(cfg.get("callbacks"))
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without somewhere to log
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)


@rank_zero_only
def write_metrics(metrics: dict, output_dir: str | Path) -> None:
    path = Path(output_dir) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("Metrics written to %s", path)


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}


@rank_zero_only
def discard_run_dir(output_dir: str) -> None:
    """A run that failed on its input leaves nothing behind in logs/ (only its config and log would be there)."""
    path = Path(output_dir)
    if path.is_dir() and not any(path.rglob("*.ckpt")):
        shutil.rmtree(path, ignore_errors=True)


def train(cfg: DictConfig) -> float | None:
    """Fit on train, validate every epoch, test the best checkpoint; returns `cfg.optimized_metric` for sweeps."""
    L.seed_everything(cfg.seed, workers=True)
    resume = resume_checkpoint(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name / "runs")
    datamodule: IMDBDataModule = hydra.utils.instantiate(cfg.data)
    model: SentimentClassifier = hydra.utils.instantiate(cfg.model)
    datamodule.tokenizer  # fail on a bad max_length before the trainer starts writing anything
    trainer = build_trainer(cfg)
    checkpointers = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    if resume is not None:
        # Keep writing next to the checkpoint resumed from: Lightning then restores the best score and the files
        # it tracks (in a new folder it forgets them), and the next ckpt_path=last finds the newest of this lineage.
        for checkpointer in checkpointers:
            checkpointer.dirpath = os.path.realpath(resume.parent)
        rank_zero_info(f"Resuming from {resume}")
    total, trainable = count_parameters(model)
    log.info("Model %s: %.1fM parameters (%.1fM trainable). Output: %s", cfg.model.net.checkpoint, total / 1e6, trainable / 1e6, cfg.paths.output_dir)
    if checkpointers:
        rank_zero_info(f"Checkpoints go to {checkpointers[0].dirpath}")
    for logger in trainer.loggers:
        logger.log_hyperparams({"model": OmegaConf.to_container(cfg.model), "data": OmegaConf.to_container(cfg.data), "trainer": OmegaConf.to_container(cfg.trainer), "seed": cfg.seed, "params/total": total, "params/trainable": trainable})

    metrics: dict[str, float] = {"params/total": total, "params/trainable": trainable}
    if cfg.get("train", True):
        try:
            if cfg.get("compile"):
                model.net.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model
            ensure_writable(*(c.dirpath for c in checkpointers))
            with exit_on_signal(trainer):  # SIGTERM / Ctrl-C: checkpoint, resume command, exit 143 / 130
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        except TrainingDiverged as err:
            last = newest_checkpoint(Path(checkpointers[0].dirpath), "*.ckpt") if checkpointers else None
            raise TrainingDiverged(f"{err} Last good checkpoint: {last or 'none written yet'}.") from None
        metrics.update(scalars(trainer.callback_metrics))
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint: testing the weights in memory.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(scalars(trainer.callback_metrics))
        if best:
            metrics["best_checkpoint"] = best
    write_metrics(metrics, cfg.paths.output_dir)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


def load_checkpoint(path: str | None) -> tuple[SentimentClassifier, dict]:
    """The model and the datamodule settings saved in a checkpoint written by `train`."""
    if not path:
        raise UserError("ckpt_path is not set. Pass ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"ckpt_path={path}: no such file. Checkpoints are under logs/train/runs/<run>/checkpoints/.")
    blob = load_checkpoint_safely(file, f"ckpt_path={path}")
    if not isinstance(blob, dict) or "state_dict" not in blob or "datamodule_hyper_parameters" not in blob:
        raise UserError(f"ckpt_path={path}: not a checkpoint written by src/train.py (no model state or data settings).")
    model = SentimentClassifier(**blob["hyper_parameters"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), dict(blob["datamodule_hyper_parameters"])


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on its held-out set (or on other data: data.path=...); prints and logs the metrics."""
    model, data_hparams = load_checkpoint(cfg.ckpt_path)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if v is not None}
    datamodule = IMDBDataModule(**{**data_hparams, **overrides})
    trainer = build_trainer(cfg)
    results = trainer.test(model, datamodule=datamodule)
    metrics = scalars(results[0]) if results else {}
    write_metrics({**metrics, "checkpoint": str(cfg.ckpt_path)}, cfg.paths.output_dir)
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.4f}")
    return metrics


def verbatim_text_argument(argv: list[str]) -> list[str]:
    """Quotes `text=...` for Hydra: reviews hold commas, colons and quotes that its override grammar would parse."""
    quoted = []
    for arg in argv:
        if arg.startswith("text=") and not arg[5:].startswith(("'", '"')):
            # Hydra unescapes backslashes only before a quote or the closing quote: double just those, escape quotes.
            value = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), arg[5:])
            arg = f"text='{value}'"
        quoted.append(arg)
    return quoted


@torch.no_grad()
def predict(cfg: DictConfig) -> list[tuple[str, float, str]]:
    """Label and probability for `text=...` or each line of `file=...`."""
    texts = [cfg.text] if cfg.get("text") is not None else []
    if cfg.get("file"):
        from bertgpt.data.reviews import read_lines

        texts += read_lines(Path(cfg.file).expanduser())
    texts = [t for t in texts if str(t).strip()] if texts else texts
    if not texts:
        raise UserError('nothing to predict: pass text="a review" or file=path/to/reviews.txt (one review per line, not empty).')
    model, data_hparams = load_checkpoint(cfg.ckpt_path)
    tokenizer = load_tokenizer(data_hparams["tokenizer"])
    ids = tokenize.encode(tokenizer, [str(t) for t in texts], data_hparams["max_length"], data_hparams["truncation"])
    collate = IMDBDataModule.collator_for(tokenizer)
    rows = []
    for start in range(0, len(ids), cfg.batch_size):
        chunk = ids[start : start + cfg.batch_size]
        batch = collate([(torch.tensor(x), 0) for x in chunk])
        probs = model(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)[:, 1]
        rows += [(("positive" if p >= 0.5 else "negative"), float(p), t) for p, t in zip(probs.tolist(), texts[start : start + cfg.batch_size])]
    for label, p_pos, text in rows:
        print(f"{label}\t{max(p_pos, 1 - p_pos):.4f}\t{text}")
    return rows
