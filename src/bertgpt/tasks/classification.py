"""One LightningModule for every backbone: library BERT / GPT-2 / Llama and our hand-written models alike."""

from __future__ import annotations

import math

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryConfusionMatrix,
    BinaryF1Score,
)

from bertgpt.errors import TrainingDiverged, UserError


class SentimentClassifier(L.LightningModule):
    """Fine-tunes `net` (built by Hydra from its `_target_` config) to classify reviews.

    `net(input_ids=..., attention_mask=...)` must return logits of shape (B, num_labels), or an object with
    `.logits` (every Hugging Face `*ForSequenceClassification` does). Keeping the net's config, not the net,
    in the hyperparameters lets `load_from_checkpoint` rebuild it from the checkpoint alone.
    """

    def __init__(
        self,
        net: dict,
        lr: float = 2e-5,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.0,
        schedule: str = "linear",
        fused: bool = False,
    ):
        super().__init__()
        if schedule not in ("linear", "constant"):
            raise UserError(f"model.schedule={schedule}: choose linear (warmup then linear decay to 0) or constant.")
        if not 0 <= warmup_ratio < 1:
            raise UserError(f"model.warmup_ratio={warmup_ratio} must be in [0, 1).")
        self.save_hyperparameters(logger=False)
        # from_pretrained returns eval mode (dropout off) and Lightning keeps each submodule's mode: fine-tune in train mode.
        self.net = hydra.utils.instantiate(net).train()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc, self.test_acc = BinaryAccuracy(), BinaryAccuracy()
        self.val_f1, self.test_f1 = BinaryF1Score(), BinaryF1Score()
        self.val_acc_best = MaxMetric()
        self.val_confusion = BinaryConfusionMatrix()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.net(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.logits

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"]).float()
        loss = F.cross_entropy(logits, batch["labels"])
        check_finite(loss, self.global_step)
        return loss, logits.argmax(dim=-1)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity-check pass must not count as a best
        if self._resumed_val_acc_best is not None:
            self.val_acc_best.update(torch.tensor(self._resumed_val_acc_best))

    # The running best is a metric state, not a parameter: it is not in the state_dict, so it travels beside it
    # and a resumed run reports the best over all its epochs, not only those since the restart.
    _resumed_val_acc_best: float | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best.max_value.item()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("val_acc_best")
        self._resumed_val_acc_best = best if best is not None and math.isfinite(best) else None

    def training_step(self, batch, batch_idx):
        loss, _ = self.step(batch)
        self.train_loss(loss)
        n = len(batch["labels"])
        # Two names, not one with on_step+on_epoch: that would log only train/loss_step and train/loss_epoch.
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, preds = self.step(batch)
        n = len(batch["labels"])
        self.val_loss(loss, n)
        self.val_acc(preds, batch["labels"])
        self.val_f1(preds, batch["labels"])
        self.val_confusion(preds, batch["labels"])
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/f1", self.val_f1, on_epoch=True, batch_size=n)

    def on_validation_epoch_start(self) -> None:
        self.val_confusion.reset()  # read by ConfusionMatrixLogger at the end of the epoch

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        loss, preds = self.step(batch)
        n = len(batch["labels"])
        self.test_loss(loss, n)
        self.test_acc(preds, batch["labels"])
        self.test_f1(preds, batch["labels"])
        self.log("test/loss", self.test_loss, on_epoch=True, batch_size=n)
        self.log("test/acc", self.test_acc, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("test/f1", self.test_f1, on_epoch=True, batch_size=n)

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

    def configure_optimizers(self):
        """AdamW with weight decay on weights only: never on biases or normalisation gains (BERT's recipe)."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(weight_decay_groups(self, hp.weight_decay), lr=hp.lr, eps=hp.eps, betas=tuple(hp.betas), fused=self._fused or None)
        if hp.schedule == "constant" and hp.warmup_ratio == 0:
            return optimizer
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = int(hp.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 1.0 if hp.schedule == "constant" else max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stops a run whose loss is NaN or infinite, naming the step and the fixes."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"the loss is {loss.item()} at step {step}: training diverged. "
            "Lower model.lr, keep trainer.gradient_clip_val=1.0, or use trainer.precision=32-true."
        )


def weight_decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weights only, never on biases or normalisation gains (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    return total, sum(p.numel() for p in module.parameters() if p.requires_grad)

