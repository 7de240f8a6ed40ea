"""A hand-written decoder-only Transformer that loads GPT-2 and Llama checkpoints (SmolLM2).

One model class; a few config fields pick the parts that differ between the two families:

                 GPT-2                          Llama / SmolLM2
    norm         layernorm (with bias)          rmsnorm
    positions    learned (wpe)                  rotary (rope_theta)
    mlp          gelu (tanh approximation)      swiglu
    attention    n_kv_head = n_head             n_kv_head < n_head (grouped-query)
    bias         true                           false

It classifies like Hugging Face's `*ForSequenceClassification`: a `score` projection (no bias) of the last
real token (num_labels=0: no `score`, a language model only, as pretraining builds it). Names follow GPT-2 (nanoGPT's), so a GPT-2 checkpoint maps one to one; `hf_names` holds the
whole mapping for both layouts. At load time Llama's q/k/v projections are stacked into one `c_attn` and
its gate/up projections into one `c_fc`: one matmul each instead of three and two.

Positions are counted over real tokens only (cumsum of attention_mask), so a left-padded batch gives the
same result as a right-padded one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, scaled_dot_product_attention
from bertgpt.models.convert import (
    build_pretrained,
    init_weights,
    load_mapped,
    make_config,
    unmap,
)

# GPT-2 stores these projections as Conv1D, (in, out): nn.Linear's weight is (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the most positions: n_positions / max_position_embeddings
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head; fewer: grouped-query attention, n_head // n_kv_head queries per key
    n_embd: int = 768
    head_dim: int | None = None  # None: n_embd // n_head
    n_inner: int | None = None  # None: 4 * n_embd
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    positions: str = "learned"  # learned | rotary
    rope_theta: float = 10000.0
    mlp: str = "gelu"  # gelu (tanh approximation, GPT-2's gelu_new) | swiglu
    bias: bool = True  # in the linear layers and LayerNorms
    tie_embeddings: bool = True  # the LM head reuses wte
    dropout: float = 0.0  # on embeddings and residual branches
    attn_dropout: float = 0.0
    num_labels: int = 2  # 0: no classification head
    pad_token_id: int | None = None  # the tokenizer's; padding is read from attention_mask, this is for reference
    init_std: float = 0.02
    attention: str = "auto"  # auto: matmul attention on a CPU, SDPA on a GPU (models/attention.py); sdpa: SDPA everywhere

    def __post_init__(self):
        check_choice(self.attention)
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.n_inner = self.n_inner or 4 * self.n_embd
        choices = dict(norm=("layernorm", "rmsnorm"), positions=("learned", "rotary"), mlp=("gelu", "swiglu"))
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise UserError(f"{field}={getattr(self, field)}: choose one of {allowed}.")
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}.")
        if self.positions == "rotary" and self.head_dim % 2:
            raise UserError(f"rotary positions rotate pairs of dimensions: head_dim={self.head_dim} must be even.")

    @classmethod
    def from_hf(cls, hf, **overrides) -> "GPTConfig":
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
        fields.update(num_labels=hf.num_labels, pad_token_id=pad, init_std=hf.initializer_range)
        # A resized model derives head_dim and the kv-head count afresh unless they are set too.
        if ("n_embd" in overrides or "n_head" in overrides) and "head_dim" not in overrides:
            fields["head_dim"] = None
        if "n_head" in overrides and "n_kv_head" not in overrides:
            fields["n_kv_head"] = max(1, overrides["n_head"] // (fields["n_head"] // fields["n_kv_head"]))
        return make_config(cls, fields, overrides)

    def to_hf(self, **extra):
        """The Hugging Face `GPT2Config` of this model (the inverse of `from_hf`), for exporting it."""
        gpt2 = dict(norm="layernorm", positions="learned", mlp="gelu", bias=True, n_kv_head=self.n_head, head_dim=self.n_embd // self.n_head)
        if any(getattr(self, k) != v for k, v in gpt2.items()):
            raise UserError(f"only the GPT-2 layout exports ({', '.join(f'{k}={v}' for k, v in gpt2.items())}).")
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=self.vocab_size, n_positions=self.block_size, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            n_inner=self.n_inner, activation_function="gelu_new", layer_norm_epsilon=self.norm_eps, tie_word_embeddings=self.tie_embeddings,
            embd_pdrop=self.dropout, resid_pdrop=self.dropout, attn_pdrop=self.attn_dropout, pad_token_id=self.pad_token_id,
            initializer_range=self.init_std, **extra,
        )


def norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (B, T, 1, hs), for positions (B, T); computed in fp32 once per forward pass and
    shared by all layers. The frequencies are not a buffer, so `model.to(bfloat16)` cannot round them.
    HF's layout rotates dimension i with i + hs/2 (not interleaved pairs): x*cos + rotate_half(x)*sin with
    rotate_half(x) = (-x2, x1). The minus sign is folded into sin here, so rotate_half becomes a roll."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions[..., None, None].float() * inv_freq  # (B, T, 1, hs/2)
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, hs) rotated; .to: under autocast x is bf16 and must stay so for SDPA."""
    return x * cos.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.attn_dropout = config.attn_dropout
        self.attend = scaled_dot_product_attention if config.attention == "auto" else F.scaled_dot_product_attention
        q_size, kv_size = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, q_size + 2 * kv_size, bias=config.bias)  # q, k, v stacked
        self.c_proj = nn.Linear(q_size, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, rope):
        B, T, _ = x.size()
        nh, nkv = self.n_head, self.n_kv_head
        qkv = self.c_attn(x).view(B, T, nh + 2 * nkv, self.head_dim)  # (B, T, nh + 2 nkv, hs)
        qk, v = qkv.split((nh + nkv, nkv), dim=2)
        if rope is not None:
            qk = apply_rotary(qk, *rope)  # queries and keys in one pass
        q, k = qk.split((nh, nkv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs), (B, nkv, T, hs) x 2
        y = self.attend(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.attn_dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,  # each k/v head serves n_head / n_kv_head query heads
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU's gate and up projections are stacked in c_fc, gate first.
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.n_inner, bias=config.bias)
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # (B, T, n_inner) each
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm: each branch reads a normalised copy and the residual stream itself is never normalised."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, mask, rope):
        x = x + self.attn(self.ln_1(x), mask, rope)
        return x + self.mlp(self.ln_2(x))


def attention_inputs(attention_mask: torch.Tensor | None, T: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions (B or 1, T) and the SDPA mask, built once per forward pass for all layers.

    The mask is None (plain causal, SDPA's fastest path) unless some row has padding on its left: with
    right padding, causality alone keeps every real token from seeing the pads behind it.
    """
    if attention_mask is None:
        return torch.arange(T, device=device)[None], None
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): left pads don't push positions on
    if bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        return positions, None
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask = causal & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    # A left pad sees no real key before it; a query that may see nothing gets NaN from softmax, and a NaN
    # value poisons every real query too, even through a zero weight. Pads see themselves instead.
    return positions, mask | torch.eye(T, dtype=torch.bool, device=device)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        if config.positions == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False) if config.num_labels else None
        self.apply(lambda m: init_weights(m, config.init_std))
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def hidden_states(self, input_ids, attention_mask=None):
        """The final-norm output, (B, T, C): HF `GPT2Model` / `LlamaModel(...).last_hidden_state` at real tokens."""
        B, T = input_ids.size()
        positions, mask = attention_inputs(attention_mask, T, input_ids.device)
        x = self.transformer.wte(input_ids)  # (B, T, C)
        rope = None
        if self.config.positions == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            rope = rotary(positions, self.config.head_dim, self.config.rope_theta)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask, rope)
        return self.transformer.ln_f(x)

    def forward(self, input_ids, attention_mask=None):
        """Class logits, (B, num_labels), from the last real token: the last 1 in each attention_mask row,
        which is the final position under left padding and the last word under right padding."""
        x = self.hidden_states(input_ids, attention_mask)
        if attention_mask is None:
            return self.score(x[:, -1])
        B, T = input_ids.size()
        last = (torch.arange(T, device=x.device) * attention_mask).argmax(-1)  # (B,)
        return self.score(x[torch.arange(B, device=x.device), last])  # (B, num_labels)

    def lm_logits(self, x):
        """Next-token logits for hidden states x (..., C)."""
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.transformer.wte.weight)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, top_k: int | None = None, temperature: float = 1.0):
        """Continue the unpadded prompts idx (B, T) by max_new_tokens tokens: greedy when top_k is None or
        temperature is 0, else sampled from the top_k tokens. No KV cache: each step re-reads the whole
        (cropped) sequence, which is plenty for a demo. Call model.eval() first to turn dropout off."""
        for _ in range(max_new_tokens):
            x = self.hidden_states(idx[:, -self.config.block_size:])[:, -1]  # (B, C): only the next token matters
            logits = self.lm_logits(x)  # (B, vocab)
            if top_k is None or temperature == 0:
                idx_next = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    @classmethod
    def from_hf_state_dict(cls, hf_config, state_dict, **overrides) -> "GPT":
        """Our GPT with the weights of a HF GPT-2 or Llama state dict, bare (`GPT2Model`, `LlamaModel`) or
        with a head (`transformer.` / `model.` prefix). `score` (and an untied `lm_head`) start fresh when absent."""
        model = cls(GPTConfig.from_hf(hf_config, **overrides))
        prefix = "transformer." if hf_config.model_type == "gpt2" else "model."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        if hf_config.model_type == "gpt2":
            state_dict = {k: v.t() if k.endswith(CONV1D) else v for k, v in state_dict.items()}
        names = hf_names(model.config, hf_config.model_type)
        model.fresh_heads = load_mapped(model, state_dict, names, optional=("score.", "lm_head."))
        return model

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under GPT-2's HF names (`GPT2LMHeadModel`; the inverse of `from_hf_state_dict`):
        the body under `transformer.` with its projections transposed back to Conv1D, the heads at the top.
        A tied LM head is wte itself, which HF ties again on load. GPT-2 layout only (see `GPTConfig.to_hf`)."""
        self.config.to_hf()  # refuses the Llama layout
        hf = unmap(self.state_dict(), hf_names(self.config, "gpt2"))
        hf = {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in hf.items()}
        return {k if k.startswith(("lm_head.", "score.")) else "transformer." + k: v for k, v in hf.items()}


def hf_names(config: GPTConfig, layout: str) -> dict[str, tuple[str, ...]]:
    """Each of our tensors -> the HF tensors (without the `transformer.` / `model.` prefix) it is made of."""
    names = {"score.weight": ("score.weight",)}
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


def build_classifier(checkpoint: str, num_labels: int = 2, pretrained: bool = True, **config_overrides) -> GPT:
    """Our GPT on `checkpoint` with a fresh `num_labels` score head; see `layers.build_pretrained`."""
    return build_pretrained(GPT, GPTConfig, checkpoint, num_labels, pretrained, **config_overrides)
