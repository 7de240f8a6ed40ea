"""What the hand-written BERT and GPT share: reading a Hugging Face checkpoint and copying it in by name.

Only configs and state dicts come from Hugging Face; every forward pass is ours (bert.py, gpt.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    cached_file,
)

from bertgpt.errors import UserError
from bertgpt.models.hub import OFFLINE_HINT, from_pretrained, resolve_checkpoint
from bertgpt.models.library import load_tokenizer


def read_hf_config(checkpoint: str) -> tuple[PretrainedConfig, int | None]:
    """The checkpoint's Hugging Face config and the pad id its tokenizer pads with (the data pipeline's)."""
    pad_token_id = load_tokenizer(checkpoint).pad_token_id
    return from_pretrained(AutoConfig, checkpoint), pad_token_id


def make_config(cls, fields: dict, overrides: dict):
    """`cls(**fields)` with `overrides` (from `model.net.*`) on top. A wider model keeps the checkpoint's
    MLP-to-width ratio unless `n_inner` is set too: SmolLM2's is 8/3, not GPT-2's 4."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown model.net option(s) {unknown}; {cls.__name__} takes {[f.name for f in dataclasses.fields(cls)]}.")
    if "n_embd" in overrides and "n_inner" not in overrides:
        overrides = {**overrides, "n_inner": fields["n_inner"] * overrides["n_embd"] // fields["n_embd"]}
    return cls(**{**fields, **overrides})


def read_hf_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, as saved: safetensors when present, else the pickled `.bin` files."""
    path = resolve_checkpoint(checkpoint)
    try:
        for index_name, single_name in ((SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME), (WEIGHTS_INDEX_NAME, WEIGHTS_NAME)):
            if file := cached_file(path, single_name, _raise_exceptions_for_missing_entries=False):
                return _read_weights(file)
            if index := cached_file(path, index_name, _raise_exceptions_for_missing_entries=False):
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
                state_dict = {}
                for shard in shards:
                    state_dict.update(_read_weights(cached_file(path, shard)))
                return state_dict
    except OSError as err:
        raise UserError(f"could not read the weights of '{checkpoint}'. {OFFLINE_HINT}") from err
    raise UserError(f"'{checkpoint}' ({path}) holds no model.safetensors or pytorch_model.bin. {OFFLINE_HINT}")


def _read_weights(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def load_mapped(
    model: nn.Module, hf: Mapping[str, torch.Tensor], names: Mapping[str, tuple[str, ...]], optional: tuple[str, ...] = ()
) -> list[str]:
    """Copy `hf` into `model`. `names` maps each of our tensors to the HF tensors it is made of, concatenated
    along dim 0 (that is how q/k/v become one fused projection). Our tensors that start with an `optional`
    prefix (the task heads) keep their fresh initialisation when the checkpoint lacks them or has them in
    another shape (another number of labels); any other gap is an error, so a wrong mapping can't
    silently leave random weights in a "pretrained" model.
    Returns the names left newly initialised."""
    own = model.state_dict()
    assert set(own) <= set(names), f"the name mapping misses {sorted(set(own) - set(names))}"
    names = {k: v for k, v in names.items() if k in own}  # e.g. biases a bias-free config doesn't have
    state_dict, fresh = {}, []
    for ours, sources in names.items():
        tensor = None
        if all(s in hf for s in sources):
            tensor = torch.cat([hf[s] for s in sources]) if len(sources) > 1 else hf[sources[0]]
        if ours.startswith(optional) and (tensor is None or tensor.shape != own[ours].shape):
            fresh.append(ours)  # absent, or a fine-tuned head for another number of labels
            continue
        if tensor is None:
            missing = [s for s in sources if s not in hf]
            raise UserError(f"the checkpoint lacks {missing} (for our {ours}): not the layout this model expects.")
        if tensor.shape != own[ours].shape:
            raise UserError(
                f"{ours}: the checkpoint has shape {tuple(tensor.shape)}, the model {tuple(own[ours].shape)}. "
                "With pretrained=true, only n_layer may be lowered (keeping the first layers); other sizes need pretrained=false."
            )
        state_dict[ours] = tensor
    model.load_state_dict(state_dict, strict=False)
    return fresh


def unmap(state_dict: Mapping[str, torch.Tensor], names: Mapping[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    """The inverse of `load_mapped`: each of our tensors under the HF names it is made of, a fused one cut
    back along dim 0 into equal parts (BERT's q/k/v). Parts of unequal size (Llama's grouped-query q and
    k/v) cannot be told apart from the names alone, so gpt.py exports the GPT-2 layout only, whose fused
    c_attn is one HF tensor. Each tensor gets its own memory: safetensors refuses to save views that share it."""
    hf = {}
    for ours, tensor in state_dict.items():
        sources = names[ours]
        if tensor.size(0) % len(sources):
            raise UserError(f"{ours} ({tuple(tensor.shape)}) does not split evenly into {list(sources)}: this layout does not export.")
        for name, part in zip(sources, tensor.chunk(len(sources))):
            hf[name] = part.detach().clone()
    return hf


@torch.no_grad()
def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The BERT / GPT-2 initialisation, for random models and for task heads a checkpoint lacks."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def build_pretrained(model_cls, config_cls, checkpoint: str, num_labels: int = 2, pretrained: bool = True, **config_overrides):
    """`model_cls` on `checkpoint` (a bundled name, a folder or a hub id), with a fresh `num_labels` head.

    `pretrained=False` keeps the checkpoint's config and vocabulary (overrides such as n_layer=2 or
    n_embd=128 resize it) but starts from random weights. With weights, n_layer may be lowered: the
    first layers are kept.
    """
    hf_config, pad_token_id = read_hf_config(checkpoint)
    overrides = dict(num_labels=num_labels, pad_token_id=pad_token_id, **config_overrides)
    if not pretrained:
        return model_cls(config_cls.from_hf(hf_config, **overrides))
    return model_cls.from_hf_state_dict(hf_config, read_hf_state_dict(checkpoint), **overrides)
