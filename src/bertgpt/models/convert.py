"""Hugging Face checkpoints <-> our models: configs both ways, weight names both ways, and the builders.

bert.py and gpt.py are architecture only (as in litgpt, which keeps checkpoint conversion out of its model
file); everything that knows a Hugging Face name or config is here. Only configs and state dicts come from
Hugging Face: every forward pass is ours.

Reading order: reading a checkpoint; copying tensors in and out by a name map (`load_mapped`, `unmap`);
BERT's config translation and names; GPT-2's and Llama's; `from_hf` / `to_hf` for any of our models; and
the builders `build_bert` / `build_gpt`, which `conf/model/*.yaml` name, with the contract of
`bertgpt.models.library.build`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import nn

from bertgpt.errors import UserError
from bertgpt.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    Encoder,
)
from bertgpt.models.gpt import GPT, GPTConfig, GPTForSequenceClassification, GPTForTokenClassification
from bertgpt.models.hub import OFFLINE_HINT, from_pretrained, resolve_checkpoint

# transformers is imported where a function needs it: predict builds our model from the config fields a checkpoint
# stored (`library_as_ours`) and starts faster without it (docs/performance.md).
if TYPE_CHECKING:
    from transformers import BertConfig as HFBertConfig
    from transformers import GPT2Config, LlamaConfig, PretrainedConfig

# ----- reading a checkpoint --------------------------------------------------------------------------------------


def read_hf_config(checkpoint: str) -> tuple[PretrainedConfig, int | None]:
    """The checkpoint's Hugging Face config and the pad id its tokenizer pads with (the data pipeline's)."""
    from transformers import AutoConfig

    from bertgpt.models.library import load_tokenizer

    pad_token_id = load_tokenizer(checkpoint).pad_token_id
    return from_pretrained(AutoConfig, checkpoint), pad_token_id


def read_hf_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, as saved: safetensors when present, else the pickled `.bin` files."""
    from transformers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
        cached_file,
    )

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


def make_config(cls, fields: dict, overrides: dict):
    """`cls(**fields)` with `overrides` (from `model.net.*`) on top. A wider model keeps the checkpoint's
    MLP-to-width ratio unless `n_inner` is set too: SmolLM2's is 8/3, not GPT-2's 4."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown model.net option(s) {unknown}; {cls.__name__} takes {[f.name for f in dataclasses.fields(cls)]}.")
    if "n_embd" in overrides and "n_inner" not in overrides:
        overrides = {**overrides, "n_inner": fields["n_inner"] * overrides["n_embd"] // fields["n_embd"]}
    return cls(**{**fields, **overrides})


# ----- copying tensors by name -----------------------------------------------------------------------------------


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


def unmap(
    state_dict: Mapping[str, torch.Tensor], names: Mapping[str, tuple[str, ...]], split_sizes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """The inverse of `load_mapped`: each of our tensors under the HF names it is made of, a fused one cut
    back along dim 0, into the `split_sizes` given for it (Llama's grouped-query q, k, v) or else into
    equal parts (BERT's q/k/v, Llama's gate/up). Each tensor gets its own memory: safetensors refuses to
    save views that share it."""
    split_sizes = split_sizes or {}
    hf = {}
    for ours, tensor in state_dict.items():
        sources = names[ours]
        sizes = split_sizes.get(ours)
        if sizes is None:
            if tensor.size(0) % len(sources):
                raise UserError(f"{ours} ({tuple(tensor.shape)}) does not split evenly into {list(sources)}: this layout does not export.")
            sizes = tensor.size(0) // len(sources)
        for name, part in zip(sources, tensor.split(sizes), strict=True):
            hf[name] = part.detach().clone()
    return hf


# ----- BERT ------------------------------------------------------------------------------------------------------

BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}  # HF hidden_act -> ours
BERT_HEADS = ("cls.", "classifier.")  # the HF tensors outside the `bert.` body of a `BertFor*` checkpoint


def bert_config_from_hf(hf: PretrainedConfig, **overrides) -> BertConfig:
    """Our config for a Hugging Face BERT config; `overrides` (n_layer=2, ...) win."""
    if hf.model_type != "bert" or getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise UserError(f"bert.py loads BERT checkpoints with absolute positions, not {hf.model_type}.")
    act = BERT_ACTIVATIONS.get(hf.hidden_act)
    if act is None:
        raise UserError(f"hidden_act={hf.hidden_act} is not supported by bert.py (gelu variants only).")
    fields = dict(
        vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
        n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads, n_embd=hf.hidden_size, n_inner=hf.intermediate_size,
        activation=act, layer_norm_eps=hf.layer_norm_eps, dropout=hf.hidden_dropout_prob,
        attn_dropout=hf.attention_probs_dropout_prob, classifier_dropout=getattr(hf, "classifier_dropout", None),
        num_labels=hf.num_labels, pad_token_id=hf.pad_token_id, init_std=hf.initializer_range,
    )
    return make_config(BertConfig, fields, overrides)


def bert_config_to_hf(config: BertConfig, **extra) -> HFBertConfig:
    """The Hugging Face `BertConfig` of our config (the inverse of `bert_config_from_hf`)."""
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(
        vocab_size=config.vocab_size, max_position_embeddings=config.block_size, type_vocab_size=config.type_vocab_size,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, hidden_size=config.n_embd, intermediate_size=config.n_inner,
        hidden_act="gelu" if config.activation == "gelu" else "gelu_new", layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attn_dropout, classifier_dropout=config.classifier_dropout,
        num_labels=config.num_labels, pad_token_id=config.pad_token_id, initializer_range=config.init_std, **extra,
    )


def bert_hf_names(config: BertConfig) -> dict[str, tuple[str, ...]]:
    """Each of our tensors -> the HF tensors (without the `bert.` prefix) it is made of. A model uses the
    entries of the tensors it has: its classifier (and the sequence head's pooler), or the masked-LM head."""
    names = {}
    for w in ("weight", "bias"):
        for i in range(config.n_layer):
            hf, ours = f"encoder.layer.{i}.", f"encoder.{i}."
            names[ours + f"attention.qkv.{w}"] = tuple(hf + f"attention.self.{n}.{w}" for n in ("query", "key", "value"))
            names[ours + f"attention.dense.{w}"] = (hf + f"attention.output.dense.{w}",)
            names[ours + f"attention_norm.{w}"] = (hf + f"attention.output.LayerNorm.{w}",)
            names[ours + f"intermediate.{w}"] = (hf + f"intermediate.dense.{w}",)
            names[ours + f"output.{w}"] = (hf + f"output.dense.{w}",)
            names[ours + f"output_norm.{w}"] = (hf + f"output.LayerNorm.{w}",)
        names[f"embeddings.LayerNorm.{w}"] = (f"embeddings.LayerNorm.{w}",)
        names[f"pooler.{w}"] = (f"pooler.dense.{w}",)
        names[f"classifier.{w}"] = (f"classifier.{w}",)
        names[f"mlm_head.dense.{w}"] = (f"cls.predictions.transform.dense.{w}",)
        names[f"mlm_head.LayerNorm.{w}"] = (f"cls.predictions.transform.LayerNorm.{w}",)
    names["mlm_head.bias"] = ("cls.predictions.bias",)
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        names[f"embeddings.{table}.weight"] = (f"embeddings.{table}.weight",)
    return names


# ----- GPT-2 and Llama -------------------------------------------------------------------------------------------

# GPT-2 stores these projections as Conv1D, (in, out): nn.Linear's weight is (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT_PREFIX = {"gpt2": "transformer.", "llama": "model."}  # where a `*For*` checkpoint keeps its body
GPT_HEADS = ("lm_head.", "score.", "classifier.")  # the HF tensors outside that body


def gpt_config_from_hf(hf: PretrainedConfig, **overrides) -> GPTConfig:
    """Our config for a Hugging Face GPT-2 or Llama config; `overrides` (n_layer=2, ...) win."""
    if hf.model_type == "gpt2":
        if hf.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"activation_function={hf.activation_function}: gpt.py has GPT-2's tanh GELU only.")
        if hf.scale_attn_by_inverse_layer_idx or hf.reorder_and_upcast_attn or not hf.scale_attn_weights:
            raise UserError("gpt.py supports GPT-2's standard attention scaling only.")
        fields = dict(
            vocab_size=hf.vocab_size, block_size=hf.n_positions, n_layer=hf.n_layer, n_head=hf.n_head,
            n_kv_head=hf.n_head, n_embd=hf.n_embd, head_dim=hf.n_embd // hf.n_head, n_inner=hf.n_inner or 4 * hf.n_embd,
            norm="layernorm", norm_eps=hf.layer_norm_epsilon, positions="learned", mlp="gelu", bias=True,
            tie_embeddings=hf.tie_word_embeddings, dropout=hf.resid_pdrop, attn_dropout=hf.attn_pdrop,
        )
    elif hf.model_type == "llama":
        rope = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise UserError(f"rope_type={rope['rope_type']}: gpt.py has plain rotary positions only (no scaling).")
        if hf.hidden_act != "silu" or hf.attention_bias != getattr(hf, "mlp_bias", False):
            raise UserError("gpt.py expects Llama's SiLU and the same bias setting for attention and MLP.")
        fields = dict(
            vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, n_layer=hf.num_hidden_layers,
            n_head=hf.num_attention_heads, n_kv_head=hf.num_key_value_heads, n_embd=hf.hidden_size,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads, n_inner=hf.intermediate_size,
            norm="rmsnorm", norm_eps=hf.rms_norm_eps, positions="rotary",
            rope_theta=rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0)), mlp="swiglu",
            bias=hf.attention_bias, tie_embeddings=hf.tie_word_embeddings, dropout=0.0, attn_dropout=hf.attention_dropout,
        )
    else:
        raise UserError(f"gpt.py loads gpt2 and llama checkpoints, not {hf.model_type}.")
    pad = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
    # The token head's dropout, by the rule of HF's GPT2/LlamaForTokenClassification.
    classifier_dropout = next((p for p in (getattr(hf, "classifier_dropout", None), getattr(hf, "hidden_dropout", None)) if p is not None), 0.1)
    fields.update(num_labels=hf.num_labels, pad_token_id=pad, init_std=hf.initializer_range, classifier_dropout=classifier_dropout)
    # A resized model derives head_dim and the kv-head count afresh unless they are set too.
    if ("n_embd" in overrides or "n_head" in overrides) and "head_dim" not in overrides:
        fields["head_dim"] = None
    if "n_head" in overrides and "n_kv_head" not in overrides:
        fields["n_kv_head"] = max(1, overrides["n_head"] // (fields["n_head"] // fields["n_kv_head"]))
    return make_config(GPTConfig, fields, overrides)


def gpt_layout(config: GPTConfig) -> str:
    """gpt2 or llama: the HF family whose architecture this config is, for exporting it. gpt.py can mix the
    parts of both (rotary positions with LayerNorm, say); such a model has no HF counterpart."""
    layouts = {
        "gpt2": dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, n_kv_head=config.n_head, head_dim=config.n_embd // config.n_head),
        "llama": dict(norm="rmsnorm", positions="rotary", mlp="swiglu", dropout=0.0),  # Llama has no residual dropout
    }
    for layout, fields in layouts.items():
        if all(getattr(config, k) == v for k, v in fields.items()):
            return layout
    described = "; ".join(f"{layout}: {', '.join(f'{k}={v}' for k, v in fields.items())}" for layout, fields in layouts.items())
    raise UserError(f"only the GPT-2 and Llama layouts export ({described}).")


def gpt_config_to_hf(config: GPTConfig, **extra) -> GPT2Config | LlamaConfig:
    """The Hugging Face `GPT2Config` or `LlamaConfig` of our config (the inverse of `gpt_config_from_hf`)."""
    from transformers import GPT2Config, LlamaConfig

    common = dict(
        vocab_size=config.vocab_size, tie_word_embeddings=config.tie_embeddings, num_labels=config.num_labels,
        classifier_dropout=config.classifier_dropout, pad_token_id=config.pad_token_id, initializer_range=config.init_std,
    )
    if gpt_layout(config) == "gpt2":
        return GPT2Config(
            n_positions=config.block_size, n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_inner=config.n_inner,
            activation_function="gelu_new", layer_norm_epsilon=config.norm_eps, embd_pdrop=config.dropout,
            resid_pdrop=config.dropout, attn_pdrop=config.attn_dropout, **common, **extra,
        )
    return LlamaConfig(
        max_position_embeddings=config.block_size, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head, hidden_size=config.n_embd, head_dim=config.head_dim, intermediate_size=config.n_inner,
        hidden_act="silu", rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, attention_bias=config.bias,
        mlp_bias=config.bias, attention_dropout=config.attn_dropout, **common, **extra,
    )


def gpt_hf_names(config: GPTConfig, layout: str) -> dict[str, tuple[str, ...]]:
    """Each of our tensors -> the HF tensors (without the `transformer.` / `model.` prefix) it is made of.
    The token head is `classifier` in GPT-2's checkpoints and `score` (with a bias) in Llama's."""
    names = {"score.weight": ("score.weight",)}
    token_head = "classifier" if layout == "gpt2" else "score"
    names |= {f"classifier.{w}": (f"{token_head}.{w}",) for w in ("weight", "bias")}
    if not config.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight",)
    if layout == "gpt2":  # our names are GPT-2's
        names["transformer.wte.weight"] = ("wte.weight",)
        names["transformer.wpe.weight"] = ("wpe.weight",)
        layer = {n: (n,) for n in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")}
        final_norm = "ln_f"
    else:
        names["transformer.wte.weight"] = ("embed_tokens.weight",)
        layer = {
            "ln_1": ("input_layernorm",),
            "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "attn.c_proj": ("self_attn.o_proj",),
            "ln_2": ("post_attention_layernorm",),
            "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
            "mlp.c_proj": ("mlp.down_proj",),
        }
        final_norm = "norm"
    hf_block = "h" if layout == "gpt2" else "layers"
    for w in ("weight", "bias"):
        names[f"transformer.ln_f.{w}"] = (f"{final_norm}.{w}",)
        for i in range(config.n_layer):
            for ours, theirs in layer.items():
                names[f"transformer.h.{i}.{ours}.{w}"] = tuple(f"{hf_block}.{i}.{t}.{w}" for t in theirs)
    return names


def gpt_split_sizes(config: GPTConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """The q, k, v rows of each fused `c_attn` in the Llama layout: unequal under grouped-query attention,
    so `unmap` is told. GPT-2's c_attn is one tensor in HF too: nothing to split."""
    if layout == "gpt2":
        return {}
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    return {f"transformer.h.{i}.attn.c_attn.{w}": (q, kv, kv) for i in range(config.n_layer) for w in ("weight", "bias")}


# ----- any of our models -----------------------------------------------------------------------------------------


def from_hf(model_cls: type[nn.Module], hf_config: PretrainedConfig, state_dict: Mapping[str, torch.Tensor], **overrides) -> nn.Module:
    """`model_cls` (a BERT or GPT class of bert.py / gpt.py) with the weights of a HF state dict, bare
    (`BertModel`: MiniLM; `GPT2Model`, `LlamaModel`) or with a head (`bert.`, `transformer.`, `model.` prefix).
    The task heads start fresh when the checkpoint lacks them (or has them for another number of labels);
    their names are left in `model.fresh_heads`."""
    if issubclass(model_cls, Encoder):
        model = model_cls(bert_config_from_hf(hf_config, **overrides))
        state_dict = {k.removeprefix("bert."): v for k, v in state_dict.items()}
        names, optional = bert_hf_names(model.config), ("pooler.", "classifier.", "mlm_head.")
    elif issubclass(model_cls, GPT):
        model = model_cls(gpt_config_from_hf(hf_config, **overrides))
        layout = hf_config.model_type
        state_dict = {k.removeprefix(GPT_PREFIX[layout]): v for k, v in state_dict.items()}
        if layout == "gpt2":
            state_dict = {k: v.t() if k.endswith(CONV1D) else v for k, v in state_dict.items()}
        names, optional = gpt_hf_names(model.config, layout), GPT_HEADS
    else:
        raise TypeError(f"{model_cls.__name__} is neither a bert.py nor a gpt.py model")
    model.fresh_heads = load_mapped(model, state_dict, names, optional)
    return model


# Our switches the library's classes lack, with the value at which ours compute what theirs do.
NOT_IN_HF = {
    BertForSequenceClassification: {"causal": False, "pooling": "cls"},
    BertForTokenClassification: {"causal": False},
    BertForMaskedLM: {"causal": False},
    GPTForSequenceClassification: {"pooling": "last"},
}


def to_hf(model: nn.Module, **config_extra) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    """Our model as Hugging Face would save it (the inverse of `from_hf`): its config (`config_extra`, such as
    `architectures`, on top) and its weights under the names of the matching `transformers` class: the body
    under `bert.` / `transformer.` / `model.` (GPT-2's projections transposed back to Conv1D), the heads at
    the top. A tied LM head is the word embeddings themselves, which HF ties again on load."""
    changed = [f"{k}={getattr(model.config, k)}" for k, default in NOT_IN_HF.get(type(model), {}).items() if getattr(model.config, k) != default]
    if changed:  # the library's class would load the weights and compute something else
        raise UserError(f"{type(model).__name__} with {', '.join(changed)} has no Hugging Face counterpart: export it with the defaults "
                        f"({', '.join(f'{k}={v}' for k, v in NOT_IN_HF[type(model)].items())}).")
    if isinstance(model, Encoder):
        hf = unmap(model.state_dict(), bert_hf_names(model.config))
        body, heads = "bert.", BERT_HEADS
        config = bert_config_to_hf(model.config, **config_extra)
    elif isinstance(model, GPT):
        layout = gpt_layout(model.config)
        hf = unmap(model.state_dict(), gpt_hf_names(model.config, layout), gpt_split_sizes(model.config, layout))
        if layout == "gpt2":
            hf = {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in hf.items()}
        body, heads = GPT_PREFIX[layout], GPT_HEADS
        config = gpt_config_to_hf(model.config, **config_extra)
    else:
        raise TypeError(f"{type(model).__name__} is neither a bert.py nor a gpt.py model")
    return config, {k if k.startswith(heads) else body + k: v for k, v in hf.items()}


# Ours that compute what the library's classes of `library.build` compute, by family and head.
LIBRARY_AS_OURS = {
    ("bert", "sequence"): BertForSequenceClassification,
    ("bert", "token"): BertForTokenClassification,
    ("gpt2", "sequence"): GPTForSequenceClassification,
    ("gpt2", "token"): GPTForTokenClassification,
    ("llama", "sequence"): GPTForSequenceClassification,
    ("llama", "token"): GPTForTokenClassification,
}


def config_fields(config: PretrainedConfig) -> dict:
    """Every field of a Hugging Face config, defaults included, as plain JSON values a checkpoint can carry."""
    return json.loads(config.to_json_string(use_diff=False))


def library_as_ours(net: Mapping, head: str, num_labels: int, state_dict: Mapping[str, torch.Tensor], pad_token_id: int | None,
                    fields: Mapping | None = None) -> nn.Module | None:
    """A trained classifier of `library.build` (its `net` config and its weights, under the library's names) as
    our model with the same weights, which computes the same logits (tests/test_predict.py) without
    transformers' model code, most of a one-sentence predict's start-up. `fields`: the backbone's config as
    `config_fields` stored it, read without importing transformers; None reads the config of `net`'s checkpoint.
    None for a family or a setting ours lack (relative positions, scaled rotary positions, ...): the library's
    own class runs those."""
    if fields is not None:  # what our config readers take of a PretrainedConfig: its fields, and its label count
        hf_config = SimpleNamespace(num_labels=len(fields.get("id2label") or {}), **fields)
    else:
        from transformers import AutoConfig

        hf_config = from_pretrained(AutoConfig, net["checkpoint"])
    model_cls = LIBRARY_AS_OURS.get((hf_config.model_type, head))
    if model_cls is None:
        return None
    try:
        model = from_hf(model_cls, hf_config, state_dict, num_labels=num_labels, pad_token_id=pad_token_id, attention=net.get("attention", "auto"))
    except UserError:  # not an error here: the caller builds the library's class instead
        return None
    if model.fresh_heads:
        raise UserError(f"the checkpoint holds no trained head ({', '.join(model.fresh_heads)}): not one written by src/train.py.")
    return model


# ----- the builders ----------------------------------------------------------------------------------------------


def build_bert(checkpoint: str, head: str = "sequence", num_labels: int = 2, pretrained: bool = True, **options):
    """Our BERT on `checkpoint` with a fresh `num_labels` head: `head="sequence"` (one label per text) or
    `"token"` (one per token). `options` are `BertConfig` fields: attn_dropout, attention, n_layer, ..., and the
    switches of the attention-direction experiment, causal (a decoder's mask) and pooling (cls, mean, last)."""
    from bertgpt.models.library import choose_head

    heads = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification}
    return build_pretrained(choose_head(heads, head), checkpoint, num_labels, pretrained, **options)


def build_gpt(checkpoint: str, head: str = "sequence", num_labels: int = 2, pretrained: bool = True, **options):
    """Our GPT (GPT-2 or Llama layout, from the checkpoint) with a fresh `num_labels` head: `head="sequence"`
    (one label per text) or `"token"` (one per token). `options` are `GPTConfig` fields, pooling (last, mean, cls) among them."""
    from bertgpt.models.library import choose_head

    heads = {"sequence": GPTForSequenceClassification, "token": GPTForTokenClassification}
    return build_pretrained(choose_head(heads, head), checkpoint, num_labels, pretrained, **options)


def build_pretrained(model_cls: type[nn.Module], checkpoint: str, num_labels: int = 2, pretrained: bool = True, **options):
    """`model_cls` on `checkpoint` (a bundled name, a folder or a hub id), with a fresh `num_labels` head.

    `pretrained=False` keeps the checkpoint's config and vocabulary (options such as n_layer=2 or
    n_embd=128 resize it) but starts from random weights. With weights, n_layer may be lowered: the
    first layers are kept. `attn_dropout=None` and `dropout=None` keep the checkpoint's, as in `library.build`.
    """
    hf_config, pad_token_id = read_hf_config(checkpoint)
    options = {k: v for k, v in options.items() if not (k in ("attn_dropout", "dropout") and v is None)}
    overrides = dict(num_labels=num_labels, pad_token_id=pad_token_id, **options)
    if pretrained:
        return from_hf(model_cls, hf_config, read_hf_state_dict(checkpoint), **overrides)
    config_from_hf = bert_config_from_hf if issubclass(model_cls, Encoder) else gpt_config_from_hf
    return model_cls(config_from_hf(hf_config, **overrides))
