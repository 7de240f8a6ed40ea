"""The optimizer every task trains with: AdamW, decay on weights only, a warmup and a linear decay, a finite loss."""

from __future__ import annotations

import torch

from bertgpt.errors import TrainingDiverged, UserError

SCHEDULES = ("linear", "constant")


def check_schedule(schedule: str, warmup_ratio: float) -> None:
    if schedule not in SCHEDULES:
        raise UserError(f"model.schedule={schedule}: choose linear (warmup then linear decay to 0) or constant.")
    if not 0 <= warmup_ratio < 1:
        raise UserError(f"model.warmup_ratio={warmup_ratio} must be in [0, 1).")


def weight_decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weights only, never on biases or normalisation gains (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_with_schedule(module: torch.nn.Module, total_steps: int, lr: float, eps: float, weight_decay: float,
                        betas=(0.9, 0.999), warmup_ratio: float = 0.0, schedule: str = "linear", fused: bool | None = None):
    """What `configure_optimizers` returns: AdamW (weight decay on weights only) and, unless the rate is constant
    from the first step, a per-step schedule: a linear warmup over `warmup_ratio` of `total_steps`, then
    constant or a linear decay to 0 at `total_steps`."""
    check_schedule(schedule, warmup_ratio)
    optimizer = torch.optim.AdamW(weight_decay_groups(module, weight_decay), lr=lr, eps=eps, betas=tuple(betas), fused=fused)
    if schedule == "constant" and warmup_ratio == 0:
        return optimizer
    total = max(1, total_steps)
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 if schedule == "constant" else max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stops a run whose loss is NaN or infinite, naming the step and the fixes."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"the loss is {loss.item()} at step {step}: training diverged. "
            "Lower model.lr, keep trainer.gradient_clip_val=1.0, or use trainer.precision=32-true."
        )


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    return total, sum(p.numel() for p in module.parameters() if p.requires_grad)
