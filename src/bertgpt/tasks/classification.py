"""Fine-tuning a backbone to classify: the shared LightningModule, and sequence classification (sentiment).

`Classifier` is what every fine-tuning task shares: it builds the backbone `net` from its Hydra config with the
task's head and label count, trains it with AdamW, clipping and the schedule of `training.optim`, and keeps the
best validation accuracy across a resume. A task subclasses it with its `head` ("sequence": one label per text;
"token": one per token, tasks/tagging.py) and its metrics.
"""

from __future__ import annotations

import logging
import math

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from bertgpt.data.collate import IGNORE
from bertgpt.errors import UserError
from bertgpt.inference import net_logits, snapshot
from bertgpt.models.lora import add_lora
from bertgpt.training.freeze import freeze_bottom
from bertgpt.training.optim import adamw_with_schedule, check_finite, check_layer_lr_decay, check_schedule
from bertgpt.training.strategies import shard_blocks

log = logging.getLogger(__name__)


class Classifier(L.LightningModule):
    """Fine-tunes `net` (built by Hydra from its `_target_` config) to predict one of `labels`.

    `net(input_ids=..., attention_mask=...)` returns logits, or an object with `.logits` (every Hugging Face
    `*For*Classification` does): (B, num_labels) for the sequence head, (B, T, num_labels) for the token head.
    Keeping the net's config, not the net, in the hyperparameters lets a checkpoint rebuild it alone; the label
    names travel with it, so eval and predict need nothing else (predict rebuilds the net alone: bertgpt.inference).
    `lora` (`r`, `alpha`, `dropout`, `target_modules`: `bertgpt.models.lora.add_lora`) with `r` set trains LoRA
    adapters and the head only. `freeze` (`embeddings`, `blocks`: `bertgpt.training.freeze.freeze_bottom`) keeps
    the embeddings and the lowest blocks at their pretrained weights and trains the rest in full. `layer_lr_decay`
    below 1 trains each layer at that times the rate of the layer above it (`bertgpt.training.optim.layer_lr_scales`).
    """

    head: str  # set by each task

    def __init__(
        self,
        net: dict,
        labels: list[str],
        lr: float = 2e-5,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.0,
        schedule: str = "linear",
        fused: bool = False,
        lora: dict | None = None,
        freeze: dict | None = None,
        layer_lr_decay: float = 1.0,
    ):
        super().__init__()
        check_schedule(schedule, warmup_ratio)
        check_layer_lr_decay(layer_lr_decay)
        if len(labels) < 2:
            raise UserError(f"the data has {len(labels)} label(s) ({labels}): a classifier needs at least two.")
        labels = [str(label) for label in labels]
        self.save_hyperparameters(logger=False)
        self.net = hydra.utils.instantiate(net, head=self.head, num_labels=len(labels))
        freezing = bool(freeze and (freeze.get("embeddings") or freeze.get("blocks")))
        if lora and lora.get("r") is not None:  # adapters and the head train, the backbone stays frozen
            if freezing:
                raise UserError(f"model.freeze={dict(freeze)} with model.lora.r={lora['r']}: LoRA already freezes the whole "
                                "backbone. Choose one: model.lora.r=null, or model.freeze.embeddings=false model.freeze.blocks=0.")
            self.net = add_lora(self.net, **lora)
        elif freezing:
            frozen = freeze_bottom(self.net, **freeze)
            log.info("model.freeze: %d parameter tensors keep their pretrained weights (embeddings %s, lowest blocks %d).",
                     len(frozen), freeze.get("embeddings", False), freeze.get("blocks", 0))
        # from_pretrained returns eval mode (dropout off) and Lightning keeps each submodule's mode: fine-tune in train mode.
        self.net.train()
        self.train_loss = MeanMetric()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = self.metrics("val/")
        self.test_metrics = self.metrics("test/")
        self.val_acc_best = MaxMetric()
        self.val_confusion = MulticlassConfusionMatrix(len(labels), ignore_index=IGNORE)
        self._rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}  # (predictions, labels) per item, loader order

    def metrics(self, prefix: str) -> MetricCollection:
        """Accuracy and F1 at least: `val/acc` picks the best checkpoint and `val/acc_best` is what sweeps maximise."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return net_logits(self.net, input_ids, attention_mask)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss, the logits and the targets, flattened to one row per position (IGNORE where it has no label)."""
        logits = self(batch["input_ids"], batch["attention_mask"]).float()
        logits, targets = logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1)
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
        check_finite(loss, self.global_step)
        return loss, logits, targets

    # The running best is a metric state, not a parameter: it is not in the state_dict, so it travels beside it
    # and a resumed run reports the best over all its epochs, not only those since the restart.
    _resumed_val_acc_best: float | None = None

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity-check pass must not count as a best
        if self._resumed_val_acc_best is not None:
            self.val_acc_best.update(torch.tensor(self._resumed_val_acc_best))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best.max_value.item()
        # Which task wrote it, so that eval and predict rebuild the same module and datamodule from the file alone.
        datamodule = self.trainer.datamodule
        checkpoint["task"] = {"module": qualified_name(type(self)), "datamodule": qualified_name(type(datamodule)) if datamodule else None}
        checkpoint["inference"] = snapshot(self.net, getattr(datamodule, "tokenizer", None))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("val_acc_best")
        self._resumed_val_acc_best = best if best is not None and math.isfinite(best) else None

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.step(batch)
        n = len(batch["input_ids"])
        self.train_loss(loss)
        # Two names, not one with on_step+on_epoch: that would log only train/loss_step and train/loss_epoch.
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def evaluation_step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits, targets = self.step(batch)
        preds = logits.argmax(dim=-1)
        if self.head == "token":  # a word's first subword has its tag, the other positions none: keep the words
            per_row = (batch["labels"] != IGNORE).sum(1).tolist()
            labelled = targets != IGNORE
            preds, targets = preds[labelled], targets[labelled]
        else:  # one label per review: no mask, so a GPU is not made to wait for the batch's result here
            per_row = [1] * len(targets)
        self._rows[stage] += zip(preds.split(per_row), targets.split(per_row))  # on their device until the epoch's end
        n = len(targets)  # the mean loss is over labelled positions: reviews, or words
        getattr(self, f"{stage}_loss")(loss, n)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(preds, targets)
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_epoch=True, prog_bar=stage == "val", batch_size=n)
        self.log_dict(metrics, on_epoch=True, prog_bar=False, batch_size=n)
        return preds, targets

    def validation_step(self, batch, batch_idx):
        preds, targets = self.evaluation_step(batch, "val")
        self.val_confusion.update(preds, targets)

    # Each held-out item's label and prediction in its split's order (a review's one label, a sentence's words):
    # what a paired comparison of two runs needs (the same items, right or wrong in each). The test's are written
    # by the pipeline as predictions.json, each validation's by callbacks.ValidationPredictions.
    val_predictions: dict | None = None
    test_predictions: dict | None = None

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()  # read by ConfusionMatrixLogger at the end of the epoch
        self._rows["val"] = []
        self.val_predictions = None

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        if not self.trainer.sanity_checking:  # the sanity check sees two batches, not the split
            self.val_predictions = self.ordered_predictions("val", self.trainer.val_dataloaders, warn=False)

    def on_test_epoch_start(self) -> None:
        self._rows["test"] = []
        self.test_predictions = None

    def test_step(self, batch, batch_idx):
        return self.evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.test_predictions = self.ordered_predictions("test", self.trainer.test_dataloaders, warn=True)

    def ordered_predictions(self, stage: str, loader, warn: bool) -> dict | None:
        """The stage's rows in its split's order, or None where this process did not see the whole split."""
        rows = self._rows[stage]
        if self.trainer.world_size > 1 or not rows:  # each rank saw a share: no single ordered list
            return None
        # The loader visits the items in its sampler's order (sorted by length, to pad least): put them back.
        order = list(loader.sampler)
        if len(order) != len(rows):  # limit_{val,test}_batches, fast_dev_run: not the whole held-out set
            if warn:
                log.warning("The %s saw %d of the %d %s items: no predictions.json.", stage, len(rows), len(order), stage)
            return None
        ordered = [None] * len(order)
        for position, item in enumerate(order):
            ordered[item] = rows[position]
        preds, targets = (torch.cat(column).cpu() for column in zip(*ordered))
        predictions = {"labels": list(self.hparams.labels), "label": targets.tolist(), "prediction": preds.tolist()}
        if self.head == "token":  # flat over the words; each sentence's count, to regroup them
            predictions["words"] = [len(p) for p, _ in ordered]
        return predictions

    @property
    def _fused(self) -> bool:
        """Fused AdamW, unless fp16's loss scaler is on: a fused step unscales the gradients itself, after clipping."""
        return bool(self.hparams.fused) and getattr(self.trainer.precision_plugin, "scaler", None) is None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning refuses to clip for any fused optimizer under mixed precision, for fp16's sake; bf16 and fp32
        # have no loss scaler, so the gradients are final here and clipping them is the classic recipe's clip.
        if not (self._fused and gradient_clip_val):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def configure_model(self) -> None:
        # Only ModelParallelStrategy (trainer=model_parallel) hands over a device mesh: FSDP2 shards the backbone
        # block by block across its data-parallel ranks. Every other strategy leaves the module as it is.
        if self.device_mesh is not None:
            shard_blocks(self.net, self.device_mesh["data_parallel"])

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(self, self.trainer.estimated_stepping_batches, hp.lr, hp.eps, hp.weight_decay, hp.betas,
                                   hp.warmup_ratio, hp.schedule, fused=self._fused or None, layer_lr_decay=hp.layer_lr_decay)


class SequenceClassifier(Classifier):
    """One label per text (a review's sentiment): the backbone's sequence head ([CLS] for BERT, the last real
    token for a decoder). Logs accuracy and F1 (of the positive class for two labels, macro-averaged above)."""

    head = "sequence"

    def metrics(self, prefix: str) -> MetricCollection:
        n = len(self.hparams.labels)
        return MetricCollection({"acc": MulticlassAccuracy(n, average="micro"), "f1": binary_or_macro_f1(n)}, prefix=prefix)


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def binary_or_macro_f1(num_classes: int):
    """F1 of class 1 (positive) for two classes, the classic sentiment figure; the macro average above two."""
    if num_classes == 2:
        return BinaryF1Score()
    return MulticlassF1Score(num_classes, average="macro")
