"""Freezing the bottom of a backbone: its embeddings and its first k Transformer blocks keep their pretrained weights.

Autograd computes no gradient for a frozen weight, and none at all below the lowest layer that trains: with the
embeddings and blocks 1..k frozen, the backward pass ends at block k + 1. Each frozen block then costs its forward
only, a third of what it costs when it trains (forward, then the gradients of its input and of its weights), and
keeps no activations for a backward pass. The lower layers of a pretrained Transformer hold its most general
features, which is why they can stay as they are; what that costs in accuracy is measured in docs/performance.md.
"""

from __future__ import annotations

from torch import nn

from bertgpt.errors import UserError
from bertgpt.training.strategies import blocks_of


def embedding_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The input embeddings' parameters: every `nn.Embedding` (tokens, learned positions, BERT's token types), and
    what a family keeps beside them in an `embeddings` module (BERT's LayerNorm)."""
    found = {}
    for module_name, module in net.named_modules():
        if isinstance(module, nn.Embedding) or module_name.rsplit(".", 1)[-1] == "embeddings":
            for name, param in module.named_parameters(prefix=module_name):
                found[name] = param
    return found


def freeze_bottom(net: nn.Module, embeddings: bool = False, blocks: int = 0) -> list[str]:
    """Freezes `net`'s embeddings (if `embeddings`) and its first `blocks` Transformer blocks, in place; returns
    the frozen parameters' names. Everything above them, the head included, trains as before."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise UserError(f"model.freeze.blocks={blocks}: how many of the lowest Transformer blocks keep their "
                        "pretrained weights, an integer from 0 (none).")
    if not isinstance(embeddings, bool):
        raise UserError(f"model.freeze.embeddings={embeddings}: true or false.")
    found = blocks_of(net)
    if blocks > len(found):
        raise UserError(f"model.freeze.blocks={blocks}: {type(net).__name__} has {len(found)} Transformer blocks; "
                        f"freeze at most {len(found)}.")
    frozen = embedding_parameters(net) if embeddings else {}
    names = {id(param): name for name, param in net.named_parameters()}
    for block in found[:blocks]:
        frozen.update((names[id(param)], param) for param in block.parameters())
    for param in frozen.values():
        param.requires_grad_(False)
    return sorted(frozen)
