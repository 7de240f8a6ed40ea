"""A hand-written decoder-only Transformer in the GPT-2 and Llama layouts (SmolLM2): the body and its heads.

One body; a few config fields pick the parts that differ between the two families:

                 GPT-2                          Llama / SmolLM2
    norm         layernorm (with bias)          rmsnorm
    positions    learned (wpe)                  rotary (rope_theta)
    mlp          gelu (tanh approximation)      swiglu
    attention    n_kv_head = n_head             n_kv_head < n_head (grouped-query)
    bias         true                           false

Reading order: `GPTConfig`, the body's parts, then the models, each matching its Hugging Face counterpart:

    GPT                           the language model: next-token logits (B, T, vocab); `generate`
    GPTForSequenceClassification  `score` (no bias) on the last real token          (B, num_labels)
    GPTForTokenClassification     dropout -> `classifier` (bias) at every position  (B, T, num_labels)

Names follow GPT-2 (nanoGPT's), so a GPT-2 checkpoint maps one to one; models/convert.py holds the mapping
for both layouts, the config translation and the builders; this file knows nothing of Hugging Face. At load
time Llama's q/k/v projections are stacked into one `c_attn` and its gate/up projections into one `c_fc`:
one matmul each instead of three and two.

Positions are counted over real tokens only (cumsum of attention_mask), so a left-padded batch gives the
same result as a right-padded one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, scaled_dot_product_attention
from bertgpt.models.bert import check_pooling, init_weights, pool


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
    num_labels: int = 2  # for the classification heads
    classifier_dropout: float = 0.1  # the token head's, as HF's *ForTokenClassification; the sequence head has none
    pad_token_id: int | None = None  # the tokenizer's; padding is read from attention_mask, this is for reference
    init_std: float = 0.02
    attention: str = "auto"  # auto: matmul attention on a CPU in bf16, else SDPA (models/attention.py); sdpa: SDPA everywhere
    pooling: str = "last"  # the sequence head's input: last (real token, HF's), mean (of the real tokens), cls (first real token)

    def __post_init__(self):
        check_choice(self.attention)
        check_pooling(self.pooling)
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
    """The body and its language-model head: HF `GPT2LMHeadModel` / `LlamaForCausalLM`, what pretraining trains.
    The classifiers below add their heads to it."""

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
        self.apply(partial(init_weights, std=config.init_std))
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

    def lm_logits(self, x):
        """Next-token logits for hidden states x (..., C). Pretraining passes only the positions it scores."""
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.transformer.wte.weight)

    def forward(self, input_ids, attention_mask=None):
        """Next-token logits at every position, (B, T, vocab): HF `GPT2LMHeadModel(...).logits`."""
        return self.lm_logits(self.hidden_states(input_ids, attention_mask))

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


class GPTForSequenceClassification(GPT):
    """One label per sequence, from the last real token: HF `GPT2ForSequenceClassification` /
    `LlamaForSequenceClassification`. In a decoder only the last token has read the whole text; `pooling`
    reads the mean of the real tokens, or the first one (which has read only itself), instead."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        init_weights(self.score, config.init_std)

    def forward(self, input_ids, attention_mask=None):
        """Class logits, (B, num_labels), from the last real token: the last 1 in each attention_mask row,
        which is the final position under left padding and the last word under right padding."""
        x = self.hidden_states(input_ids, attention_mask)
        return self.score(pool(x, attention_mask, self.config.pooling))  # (B, num_labels)


class GPTForTokenClassification(GPT):
    """One label per token, each read from what the decoder has seen so far (itself and the tokens before
    it): dropout -> `classifier` at every position, HF `GPT2ForTokenClassification` (which names it
    `classifier`) / `LlamaForTokenClassification` (`score`), both with a bias."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        init_weights(self.classifier, config.init_std)

    def forward(self, input_ids, attention_mask=None):
        """Label logits at every position, (B, T, num_labels). A pad position gets logits too; the loss must
        skip it (label -100)."""
        x = self.hidden_states(input_ids, attention_mask)  # (B, T, C)
        return self.classifier(self.dropout(x))
