"""LoRA through peft: low-rank adapters on a backbone's attention projections, the classification head in full.

`add_lora` wraps any of our classifiers, library (`transformers` BERT, GPT-2, Llama, ...) or hand-written
(bert.py, gpt.py), in a `peft.PeftModel`: every pretrained weight is frozen, each targeted linear layer gets a
trainable rank-r update B @ A scaled by alpha / r (B starts at zero, so the wrapped net starts as the net),
and the head, which a checkpoint does not have, trains in full. `merge_lora` folds the updates back into the
weights and returns the plain model, for export.

The default targets are peft's own per family for library models (BERT `query`, `value`; GPT-2 `c_attn`;
Llama `q_proj`, `v_proj`), and for ours the fused q/k/v projection (`qkv` in bert.py, `c_attn` in gpt.py, which
is GPT-2's name too): one adapter on the stacked projection, not two on q and v.

peft is imported where it is used: seconds of imports on a small CPU that a full fine-tuning run never needs.
"""

from __future__ import annotations

import sys
import warnings

from torch import nn
from transformers.pytorch_utils import Conv1D

from bertgpt.errors import UserError
from bertgpt.models.bert import Encoder
from bertgpt.models.gpt import GPT

# What our classifiers, and every `transformers` *ForSequenceClassification / *ForTokenClassification of these
# families, call their head: a top-level attribute.
HEADS = ("classifier", "score")
OUR_TARGETS = {Encoder: ["qkv"], GPT: ["c_attn"]}
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the head
ADAPTABLE = (nn.Linear, Conv1D)  # GPT-2's projections are transformers' Conv1D, a transposed Linear


def default_targets(net: nn.Module) -> list[str]:
    """The layers a family's adapters go on, chosen by what the net is (our class, or the library config's
    `model_type`), not by the checkpoint's name."""
    from peft import utils

    for cls, targets in OUR_TARGETS.items():
        if isinstance(net, cls):
            return targets
    model_type = getattr(getattr(net, "config", None), "model_type", None)
    library_targets = utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # peft's own defaults per family
    if model_type in library_targets:
        return list(library_targets[model_type])
    raise UserError(f"no default LoRA targets for {type(net).__name__} (model_type {model_type}): set "
                    f"model.lora.target_modules=[...], from its linear layers {linear_layer_names(net)}.")


def linear_layer_names(net: nn.Module) -> list[str]:
    """The distinct last names of the layers an adapter can go on, the head excluded: what target_modules takes."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, ADAPTABLE) and not is_head(name)})


def is_head(name: str) -> bool:
    return name.split(".", 1)[0] in HEADS


def targeted_layers(net: nn.Module, targets: list[str]) -> list[nn.Module]:
    """The layers `targets` name (peft's rule: a module's full name, or its last parts after a dot), each
    target naming linear layers of the body; peft itself only fails when none does, and then without saying
    what exists."""
    modules = [(name, m) for name, m in net.named_modules() if name and not is_head(name)]
    layers = []
    for target in targets:
        matched = [m for name, m in modules if name == target or name.endswith(f".{target}")]
        if not matched or not all(isinstance(m, ADAPTABLE) for m in matched):
            raise UserError(f"model.lora.target_modules: '{target}' is not a linear layer of {type(net).__name__}; "
                            f"its linear layers are {linear_layer_names(net)} (the head, {'/'.join(HEADS)}, trains in full).")
        layers += matched
    return layers


def add_lora(net: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
             target_modules: str | list[str] | None = None) -> nn.Module:
    """`net` wrapped in a `peft.PeftModel` with rank-`r` LoRA adapters on `target_modules` (None: the family's
    defaults, `default_targets`; "all-linear": every linear layer of the body); `alpha` None is 2 * r.
    Only the adapters and the head train. It is called as `net` is (`input_ids=..., attention_mask=...`),
    and its state dict (the base weights under `base_model.model.`, plus `lora_A` / `lora_B`) loads into
    another `add_lora` of the same net and settings."""
    from peft import LoraConfig, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UserError(f"model.lora.r={r}: the adapters' rank must be a positive integer (8 is usual), or null for no LoRA.")
    if not 0 <= dropout < 1:
        raise UserError(f"model.lora.dropout={dropout} must be in [0, 1).")
    heads = [name for name in HEADS if isinstance(getattr(net, name, None), nn.Module)]
    if not heads:
        raise UserError(f"{type(net).__name__} has no classification head ({' or '.join(HEADS)}) for LoRA to leave trainable.")
    if target_modules is None:
        target_modules = default_targets(net)
    elif isinstance(target_modules, str) and target_modules != ALL_LINEAR:
        target_modules = [target_modules]  # one name; peft would read a lone string as a regular expression
    if target_modules == ALL_LINEAR:
        layers = [m for name, m in net.named_modules() if isinstance(m, ADAPTABLE) and not is_head(name)]
        if not layers:
            raise UserError(f"model.lora.target_modules=all-linear: {type(net).__name__} has no linear layer outside its head.")
    else:
        target_modules = [str(t) for t in target_modules]
        layers = targeted_layers(net, target_modules)
    # GPT-2's Conv1D keeps its weight as (in, out): peft must be told, or it warns and adapts.
    conv1d = all(isinstance(m, Conv1D) for m in layers)
    config = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout, target_modules=target_modules,
                        exclude_modules=heads, fan_in_fan_out=conv1d, bias="none")
    with warnings.catch_warnings():  # peft asks transformers a question that transformers renamed: noise, not ours
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        wrapped = get_peft_model(net, config)
    for name in heads:  # peft froze everything but the adapters; the head is new and trains in full
        getattr(net, name).requires_grad_(True)
    return wrapped


def merge_lora(net: nn.Module) -> nn.Module:
    """The plain model of a LoRA-wrapped `net`: each update B @ A * alpha / r added into its weight, the peft
    wrappers gone, every parameter trainable again; its outputs are the wrapped net's. `net` itself is
    consumed (peft merges in place). A net without LoRA comes back as it is."""
    peft = sys.modules.get("peft")  # a net with adapters was wrapped by peft, so it is imported; else no LoRA
    if peft is None or not isinstance(net, peft.PeftModel):
        return net
    return net.merge_and_unload().requires_grad_(True)
