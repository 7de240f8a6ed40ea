"""Scaled dot-product attention with the contract of `F.scaled_dot_product_attention`, fast on CPUs too.

On a GPU it is PyTorch's SDPA (flash, cuDNN or memory-efficient kernels). On a CPU in bf16, SDPA picks its
fused flash kernel, whose backward pass is slow for the small heads of these models: for MiniLM's (32, 12, T, 32)
batch, two batched matmuls and a softmax take a fraction of its forward + backward time at T=128, and stay ahead
up to T=512 once large tensors stop paying for fresh pages (`bertgpt.host.keep_freed_memory`; measured by
`bench/bench_attention.py`: docs/performance.md, "What bound the 128-token step"). So on a CPU in bf16 the
scores are materialised: softmax(q kᵀ · scale + mask) v. In fp32 (a CPU without bf16) the flash kernel is the
faster one (docs/performance.md, "Tokenization and attention"), so fp32 goes to SDPA too. `attention="sdpa"`
(`model.net.attention`) keeps PyTorch's choice everywhere.

The Hugging Face models use it too: `hf_attention` is registered with transformers' `AttentionInterface` as
`attn_implementation="bertgpt"`, with SDPA's boolean masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bertgpt.errors import UserError

ATTENTION_CHOICES = ("auto", "sdpa")  # auto: matmuls on a CPU in bf16, SDPA elsewhere; sdpa: PyTorch's SDPA everywhere


def check_choice(attention: str) -> str:
    if attention not in ATTENTION_CHOICES:
        raise UserError(f"attention={attention}: choose auto (matmul attention on a CPU in bf16, SDPA otherwise) or sdpa.")
    return attention


def fused_is_faster(q: torch.Tensor) -> bool:
    """Where PyTorch's SDPA beats the matmul path: on a GPU, and in fp32 on a CPU (docs/performance.md).

    Under CPU autocast the precision is autocast's, whatever q's dtype: a rotary model's q leaves its rotation in
    fp32 (the cos/sin tables are fp32), yet its products run in bf16 all the same."""
    if q.device.type != "cpu":
        return True
    precision = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return precision == torch.float32


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """`F.scaled_dot_product_attention`'s arguments and result, (B, nh, T, hs); on a CPU in bf16, the matmul path."""
    if fused_is_faster(q):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    return matmul_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def matmul_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q kᵀ · scale + mask) v in the inputs' dtype. A boolean mask marks the keys a query may see.

    With `enable_gqa` each k/v head serves a run of n_head / n_kv_head consecutive query heads (SDPA's order). Those
    query heads are stacked as one block of rows against their k/v head, a view of q, so k and v are not copied
    once per query head, neither for the products nor for the backward pass."""
    *batch, nh, T, hs = q.shape
    S = k.size(-2)
    groups = nh // k.size(-3) if enable_gqa else 1
    scale = 1 / math.sqrt(hs) if scale is None else scale
    q = (q * scale).reshape(*batch, nh // groups, groups * T, hs)  # scaling q is T x hs multiplies, not T x S
    scores = (q @ k.transpose(-2, -1)).view(*batch, nh, T, S)
    hidden = torch.finfo(scores.dtype).min  # not -inf: a query that may see no key gets uniform weights, not NaN
    if is_causal:
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), hidden)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask.logical_not(), hidden)
        else:
            scores = scores + attn_mask.to(scores.dtype)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return (probs.view(*batch, nh // groups, groups * T, S) @ v).view(*batch, nh, T, v.size(-1))  # (B, nh, T, hs)


def count_cpu_flash_flops() -> None:
    """Teach torch's `FlopCounterMode` the forward of SDPA's fused CPU kernel, which it leaves uncounted (it counts
    the GPU kernels): without it, a forward's count in fp32 on a CPU, where attention runs that kernel, misses
    attention's two matmuls. The formula is torch's own for the GPU flash kernel, whose arguments come in the same
    order. (Backward counts differ by kernel, the fused ones recomputing the scores: `bench/bench_train.py` counts
    training steps on the math kernel, the model's own FLOPs.)"""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop

    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if kernel not in flop_registry:  # once per process, and not at all once torch counts it itself
        register_flop_formula(kernel, get_raw=True)(sdpa_flop)


def hf_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract (see its `sdpa_attention_forward`): (B, T, nh, hs) out."""
    if fused_is_faster(query) or kwargs.get("position_bias") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.size(2) > 1 and attention_mask is None and is_causal
    y = matmul_attention(query, key, value, attention_mask, dropout, is_causal, scaling, enable_gqa=key.size(1) != query.size(1))
    return y.transpose(1, 2).contiguous(), None


def register_with_transformers() -> str:
    """Makes `attn_implementation="bertgpt"` mean `hf_attention`, with the boolean masks SDPA gets."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register("bertgpt", hf_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("bertgpt", sdpa_mask)
    return "bertgpt"
