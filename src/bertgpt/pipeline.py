"""What the entry scripts do, for every task: build from config, train, test, evaluate (predict: bertgpt.inference).

A task is a LightningModule (tasks/) and a datamodule (data/), picked by `conf/task/<name>.yaml`. The
datamodule is built first: it knows the labels (two sentiments, or the tagset), and the module is built with
them, so one `train` serves every task.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bertgpt.errors import TrainingDiverged, UserError
from bertgpt.files import write_text
from bertgpt.inference import project_name, read_checkpoint
from bertgpt.models.attention import count_cpu_flash_flops
from bertgpt.training.callbacks import exit_on_signal
from bertgpt.training.checkpoints import ensure_writable, newest_checkpoint, resume_checkpoint
from bertgpt.training.optim import count_parameters
from bertgpt.training.strategies import recompute_blocks

log = logging.getLogger(__name__)

# Lightning warns that a mid-epoch resume replays the epoch from its first batch; ours does not (ResumableSampler).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# The model summary warns that it sizes bf16-mixed weights at 32 bits: they are fp32 under mixed precision, so it is right.
warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")


def instantiate_list(group: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig, extra_callbacks: list[L.Callback] = (), **kwargs) -> L.Trainer:
    """The Trainer of `cfg.trainer` with its loggers and callbacks, and `extra_callbacks` that the run builds itself."""
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = [*instantiate_list(cfg.get("callbacks")), *extra_callbacks]
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without somewhere to log
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)


@rank_zero_only
def write_metrics(metrics: dict, output_dir: str | Path) -> None:
    path = write_text(Path(output_dir) / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info("Metrics written to %s", path)


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}


def summarise_flops(model, datamodule, trainer: L.Trainer, compiled: bool) -> None:
    """Give Lightning's model summary one full-length item to run, so that its "Total FLOPs" counts a forward
    (without an example input it prints 0). Not where that forward would cost or hang: a compiled net (one more
    shape to compile) and sharded strategies (the summary runs on rank 0 alone, whose parameters are not whole)."""
    strategy = trainer.strategy
    whole = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, DeepSpeedStrategy)
    if compiled or not whole or not any(isinstance(c, ModelSummary) for c in trainer.callbacks):
        return
    count_cpu_flash_flops()
    length = datamodule.hparams.max_length
    model.example_input_array = (torch.zeros(1, length, dtype=torch.long), torch.ones(1, length, dtype=torch.long))
    rank_zero_info(f"The model summary's FLOPs are one forward of one {length}-token item (training costs about 3x that an item).")


def task_results(model, datamodule, output_dir: str | Path) -> dict:
    """What a task adds to metrics.json after its test: the per-tag table (tagging), the majority baseline; and
    the per-review predictions (sentiment) as predictions.json beside it."""
    extra = {}
    if getattr(model, "per_tag", None):
        from bertgpt.tasks.tagging import per_tag_table

        extra["per_tag"] = model.per_tag
        if rank_zero_only.rank == 0:
            table = per_tag_table(model.per_tag)
            write_text(Path(output_dir) / "per_tag.md", table + "\n")
            log.info("Per-tag precision / recall / F1 on the test split:\n%s", table)
    if getattr(model, "test_predictions", None) and rank_zero_only.rank == 0:  # per review, for paired comparisons
        write_text(Path(output_dir) / "predictions.json", json.dumps(model.test_predictions) + "\n")
    baseline = datamodule.baseline() if hasattr(datamodule, "baseline") else None
    if baseline is not None:  # None: no training split to count the tags of (data.test_all)
        extra["test/baseline_acc"] = baseline
        log.info("Majority tag per word (the floor every tagger must beat): test accuracy %.4f", extra["test/baseline_acc"])
    return extra


def switch(cfg: DictConfig, key: str, default: bool = False) -> bool:
    """`cfg.<key>` as true or false. Hydra reads `key=no` or `key=off` as the string, which would count as true."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{key}={value}: give true or false.")
    return value


def recompute_if_asked(cfg: DictConfig, net: torch.nn.Module) -> None:
    """activation_checkpointing=true (train and pretrain): each Transformer block of `net` keeps only its input
    for the backward pass (`recompute_blocks`), on any trainer but one that already recomputes them itself."""
    if not switch(cfg, "activation_checkpointing"):
        return
    if OmegaConf.select(cfg, "trainer.strategy.activation_checkpointing"):
        raise UserError("activation_checkpointing=true and trainer.strategy.activation_checkpointing=true would both recompute each block: keep one.")
    log.info("Activation checkpointing: %d Transformer blocks keep only their input and run again in the backward pass.", recompute_blocks(net))


def train(cfg: DictConfig) -> float | None:
    """Fit on train, validate every epoch, test the best checkpoint; returns `cfg.optimized_metric` for sweeps."""
    compile_net, fit, test = (switch(cfg, key, default) for key, default in (("compile", False), ("train", True), ("test", True)))
    L.seed_everything(cfg.seed, workers=True)
    resume = resume_checkpoint(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name / "runs")
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, **datamodule.task_options())  # the labels come from the data
    recompute_if_asked(cfg, model.net)
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
    if fit:
        try:
            if compile_net:
                model.net.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model
            summarise_flops(model, datamodule, trainer, compiled=compile_net)
            ensure_writable(*(c.dirpath for c in checkpointers if c.dirpath))  # Lightning's default one has none yet
            with exit_on_signal(trainer):  # SIGTERM / Ctrl-C: checkpoint, resume command, exit 143 / 130
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        except TrainingDiverged as err:
            last = newest_checkpoint(Path(checkpointers[0].dirpath), "*.ckpt") if checkpointers else None
            raise TrainingDiverged(f"{err} Last good checkpoint: {last or 'none written yet'}.") from None
        metrics.update(scalars(trainer.callback_metrics))
    if test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint: testing the weights in memory.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(scalars(trainer.callback_metrics))
        metrics.update(task_results(model, datamodule, cfg.paths.output_dir))
        if best:
            metrics["best_checkpoint"] = best
    write_metrics(metrics, cfg.paths.output_dir)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


def load_checkpoint(path: str | None):
    """The model and its datamodule (built from the settings saved beside it) of a checkpoint written by `train`."""
    blob = read_checkpoint(path)
    module_class, datamodule_class = (hydra.utils.get_class(project_name(blob["task"][k], path)) for k in ("module", "datamodule"))
    model = module_class(**blob["hyper_parameters"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), datamodule_class, dict(blob["datamodule_hyper_parameters"])


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on the held-out split of its training data, or on every row of other data (data.path=...,
    in any format the task reads); prints and logs the metrics."""
    model, datamodule_class, data_hparams = load_checkpoint(cfg.ckpt_path)
    overrides = eval_data(OmegaConf.to_container(cfg.data), data_hparams, datamodule_class)
    datamodule = datamodule_class(**{**data_hparams, **overrides})
    datamodule.use_labels(list(model.hparams.labels))  # the model's label ids, whatever labels this data uses
    trainer = build_trainer(cfg)
    results = trainer.test(model, datamodule=datamodule)
    metrics = scalars(results[0]) if results else {}
    extra = task_results(model, datamodule, cfg.paths.output_dir)
    tested = {"test/samples": len(datamodule.splits["test"]), "test/data": datamodule.test_origin}
    write_metrics({**metrics, **extra, **tested, "checkpoint": str(cfg.ckpt_path)}, cfg.paths.output_dir)
    for name, value in sorted({**metrics, **{k: v for k, v in extra.items() if isinstance(v, float)}}.items()):
        print(f"{name}: {value:.4f}")
    return metrics


def eval_data(given: dict, data_hparams: dict, datamodule_class) -> dict:
    """The data settings eval gives on top of the checkpoint's: other data than the training data is tested whole
    (data.test_all), read in whatever format it is; the training data, named by its path or not at all, by the
    held-out split alone, which the model never trained on. data.source / data.test_all given still win."""
    overrides = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(overrides) - set(inspect.signature(datamodule_class).parameters))
    if unknown:  # conf/eval.yaml offers every task's data keys: a tagging key given to a sentiment model, or the reverse
        raise UserError(f"{', '.join(f'data.{k}' for k in unknown)}: not an option of this checkpoint's data ({datamodule_class.__name__}). "
                        "Drop it (the other task's data keys do not apply).")
    path, trained_on = overrides.get("path"), data_hparams.get("path")
    if path is None or same_file(path, trained_on):
        return overrides
    if trained_on is None and same_file(path, datamodule_class.bundled_data(data_hparams)):
        del overrides["path"]  # the bundled data, read as training read it (its reviews are only some of that CSV's rows)
        return overrides
    return {"source": "auto", "test_all": True, **overrides}


def same_file(path: str | Path, other: str | Path | None) -> bool:
    return other is not None and os.path.realpath(Path(path).expanduser()) == os.path.realpath(Path(other).expanduser())
