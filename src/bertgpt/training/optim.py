"""The optimizer every task trains with: AdamW, decay on weights only, a warmup and a linear decay, a finite loss."""

from __future__ import annotations

import torch

from bertgpt.errors import TrainingDiverged, UserError
from bertgpt.training.freeze import embedding_parameters
from bertgpt.training.strategies import blocks_of

SCHEDULES = ("linear", "constant")


def check_schedule(schedule: str, warmup_ratio: float) -> None:
    if schedule not in SCHEDULES:
        raise UserError(f"model.schedule={schedule}: choose linear (warmup then linear decay to 0) or constant.")
    if not 0 <= warmup_ratio < 1:
        raise UserError(f"model.warmup_ratio={warmup_ratio} must be in [0, 1).")


def check_layer_lr_decay(decay: float) -> None:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise UserError(f"model.layer_lr_decay={decay}: each layer's rate is this times the rate of the layer above it, "
                        "a number in (0, 1]; 1 trains every layer at model.lr.")


def layer_lr_scales(module: torch.nn.Module, decay: float) -> dict[int, tuple[str, float]]:
    """Layer-wise rate decay (ULMFiT's discriminative fine-tuning, ELECTRA's layer-wise decay): each parameter's layer
    and share of the peak rate, by `id`: `decay` to the power of the layers above it. What sits outside the Transformer
    blocks and the embeddings (the head, BERT's pooler, a decoder's final norm: "top") trains at the full rate, the top
    block at `decay`, the embeddings at decay ** (blocks + 1): the lower a layer, the more general what it holds, and
    the less fine-tuning moves it."""
    check_layer_lr_decay(decay)
    blocks = blocks_of(module)
    if not blocks:
        raise UserError(f"model.layer_lr_decay={decay}: {type(module).__name__} has no Transformer blocks to decay the rate "
                        "over; set model.layer_lr_decay=1.")
    top = len(blocks) + 1
    layers = {id(param): ("embeddings", 0) for param in embedding_parameters(module).values()}
    for i, block in enumerate(blocks, start=1):
        layers.update((id(param), (f"block{i}", i)) for param in block.parameters())
    scales = {}
    for param in module.parameters():
        name, depth = layers.get(id(param), ("top", top))
        scales[id(param)] = (name, decay ** (top - depth))
    return scales


def weight_decay_groups(module: torch.nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups: decay on weights only, never on biases or normalisation gains (BERT's recipe). Under
    a `layer_lr_decay` below 1, a pair of groups per layer, top first, each with its `lr_scale` of the peak rate and
    a `name` (block3, block3-no_decay, ...) that LearningRateMonitor logs its rate under."""
    layers = layer_lr_scales(module, layer_lr_decay) if layer_lr_decay != 1 else {}
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "norm" in name.lower())
            layer, scale = layers.get(id(param), (None, 1.0))
            if (scale, decays) not in groups:
                groups[scale, decays] = {"params": [], "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
                if layer:
                    groups[scale, decays]["name"] = layer if decays else f"{layer}-no_decay"
            groups[scale, decays]["params"].append(param)
    return [groups[key] for key in sorted(groups, reverse=True)]


def adamw_with_schedule(module: torch.nn.Module, total_steps: int, lr: float, eps: float, weight_decay: float,
                        betas=(0.9, 0.999), warmup_ratio: float = 0.0, schedule: str = "linear", fused: bool | None = None,
                        layer_lr_decay: float = 1.0):
    """What `configure_optimizers` returns: AdamW (weight decay on weights only; each layer's peak rate `lr` times
    its `layer_lr_decay` scale) and, unless the rate is constant from the first step, a per-step schedule: a linear
    warmup over `warmup_ratio` of `total_steps`, then constant or a linear decay to 0 at `total_steps`."""
    check_schedule(schedule, warmup_ratio)
    groups = weight_decay_groups(module, weight_decay, layer_lr_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr, eps=eps, betas=tuple(betas), fused=fused)
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
