"""Pretraining runs: build the language model and its text blocks, train for a budget of steps, export.

`src/pretrain.py` calls `pretrain`. The run ends by exporting a Hugging Face folder that
`src/train.py model=bert_scratch|gpt_scratch model.net.checkpoint=<run>/export` fine-tunes, and the library's
`BertForMaskedLM` / `GPT2LMHeadModel` load.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from bertgpt.data.tokenize import special_tokens
from bertgpt.errors import UserError
from bertgpt.files import atomic_folder
from bertgpt.models.convert import to_hf
from bertgpt.pipeline import build_trainer, recompute_if_asked, scalars, write_metrics
from bertgpt.tasks.language_model import OBJECTIVES, LanguageModel
from bertgpt.training.optim import count_parameters

log = logging.getLogger(__name__)


@rank_zero_only
def export(model: LanguageModel, folder: Path) -> Path:
    """A Hugging Face folder: config.json, model.safetensors (HF names) and the tokenizer files.

    Written into a temporary folder beside `folder` and renamed into place: a crash leaves no half export.
    The tokenizer's length limit becomes block_size, the most positions the model has, so a fine-tune
    asking for more stops with a clear error instead of indexing past the position table.
    """
    net, tokenizer = model.net, model.tokenizer
    start, end = special_tokens(tokenizer)
    architecture = "BertForMaskedLM" if model.hparams.objective == "mlm" else "GPT2LMHeadModel"
    config, state_dict = to_hf(net, architectures=[architecture], bos_token_id=start[0] if start else None, eos_token_id=end[-1])
    tokenizer.model_max_length = model.hparams.block_size
    with atomic_folder(folder) as tmp:  # a rerun into the same folder: the old export goes once the new one is whole
        config.save_pretrained(tmp)
        save_file({k: v.float().cpu().contiguous() for k, v in state_dict.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
    log.info("Exported a Hugging Face %s to %s", architecture, folder)
    return folder


class ExportAt(L.Callback):
    """Exports the model as it is after each of `steps` optimizer steps, into `<folder>/export_step<N>`: the
    checkpoints whose fine-tuned accuracy shows the trend over pretraining (`make compare-controlled`)."""

    def __init__(self, steps: list[int], folder: Path):
        self.steps, self.folder, self.written = sorted(set(steps)), folder, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # counts optimizer steps: several micro-batches of one step export once
        if step in self.steps and step not in self.written:
            self.written[step] = str(export(pl_module, self.folder / f"export_step{step}"))


def pretrain(cfg: DictConfig) -> dict:
    """Pretrain for trainer.max_steps, validate at the end, export (and at each of export_steps), and write metrics.json."""
    if not cfg.trainer.get("max_steps") or cfg.trainer.max_steps < 1:
        raise UserError(f"trainer.max_steps={cfg.trainer.get('max_steps')}: set the budget in steps, e.g. trainer.max_steps=2000.")
    if cfg.model.block_size < cfg.data.block_size:
        raise UserError(f"model.block_size={cfg.model.block_size} is below data.block_size={cfg.data.block_size}: set data.block_size, the model follows it.")
    export_steps = list(cfg.get("export_steps") or [])
    if any(not isinstance(n, int) or not 0 < n < cfg.trainer.max_steps for n in export_steps):
        raise UserError(f"export_steps={export_steps}: each is a step before the end of the budget (0 < N < trainer.max_steps="
                        f"{cfg.trainer.max_steps}), e.g. export_steps=[100,200]; the end itself is always exported, to export/.")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model: LanguageModel = hydra.utils.instantiate(cfg.model)
    recompute_if_asked(cfg, model.net)
    exports = ExportAt(export_steps, Path(cfg.paths.output_dir))
    trainer = build_trainer(cfg, extra_callbacks=[exports])
    total, _ = count_parameters(model)
    log.info("Pretraining %s (%s): %.1fM parameters. Output: %s", cfg.model.objective, OBJECTIVES[cfg.model.objective], total / 1e6, cfg.paths.output_dir)
    for logger in trainer.loggers:
        logger.log_hyperparams({"model": OmegaConf.to_container(cfg.model), "data": OmegaConf.to_container(cfg.data),
                                "trainer": OmegaConf.to_container(cfg.trainer), "seed": cfg.seed, "params/total": total})
    trainer.fit(model, datamodule=datamodule)
    metrics = {"params/total": total, "train/steps": trainer.global_step, **scalars(trainer.callback_metrics)}
    if model.last_val_step != trainer.global_step:  # the budget did not end on a validation: the final figures
        trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics.update(scalars(trainer.callback_metrics))
    metrics["export"] = str(export(model, Path(cfg.paths.output_dir) / "export"))
    if exports.written:
        metrics["exports"] = {str(step): path for step, path in sorted(exports.written.items())}
    write_metrics(metrics, cfg.paths.output_dir)
    for name in ("val/loss", "val/ppl", "val/token_acc", "train/tokens_per_sec"):
        log.info("%s: %.4f", name, metrics.get(name, math.nan))
    return metrics
