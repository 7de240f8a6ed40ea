"""What one training step keeps for its backward pass, beside what the weights and AdamW hold: per attention path, with
and without activation checkpointing.

    python bench/bench_activations.py                                                  # the decoder, 512 tokens, batch 16
    python bench/bench_activations.py --checkpoint all-minilm-l6-v2 --batch-size 32   # MiniLM, experiment=best's shape

Builds `--checkpoint` (a bundled name or a Hugging Face folder) with the sequence head, as `src/train.py` does, runs one forward of a full `--length` batch
in training mode (bf16 autocast where the CPU has bf16, else fp32) and counts, through autograd's saved-tensor hooks,
the distinct storages kept for the backward pass. These are the allocator-free figures behind a run's peak: the run
adds the gradients, the optimizer's state, each step's transients and the freed memory the allocator keeps. Arms:
`--attention` (auto: matmuls on a CPU in bf16; sdpa) times `activation_checkpointing` off and on. First, what one
attention call keeps at the model's shape (its heads, key/value heads, head size; causal for a decoder) on the matmul
path and on SDPA's: where the two paths' whole-model figures differ. Results: bench/results/activations.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools

import torch
from common import save

from bertgpt.host import glibc, supports_bf16
from bertgpt.models.attention import matmul_attention
from bertgpt.models.library import build
from bertgpt.training.strategies import recompute_blocks

MIB = 2**20


@contextlib.contextmanager
def saved_storages():
    """{data pointer: bytes} of every distinct storage autograd keeps for the backward pass inside the block."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor.detach()  # the tensor itself would tie a saved output to its own graph: a cycle never freed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield storages


def kept_bytes(net: torch.nn.Module, input_ids: torch.Tensor, precision: torch.dtype | None) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward."""
    autocast = torch.autocast("cpu", dtype=precision) if precision else contextlib.nullcontext()
    with saved_storages() as storages, autocast:
        net(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in parameters)  # fp32 weights: counted below


def attention_call_bytes(net: torch.nn.Module, batch_size: int, length: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one attention call at `net`'s shape, per path: the matmul path
    (`bertgpt.models.attention.matmul_attention`, the one that keeps the probabilities) and PyTorch's SDPA."""
    config = net.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    causal = any(getattr(module, "is_causal", False) for module in net.modules())  # HF attention modules say so
    q, k, v = (torch.randn(batch_size, n, length, head_size, dtype=dtype, requires_grad=True) for n in (heads, kv_heads, kv_heads))
    kept = {}
    for path, attention in (("matmul", matmul_attention), ("sdpa", torch.nn.functional.scaled_dot_product_attention)):
        with saved_storages() as storages:
            attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != heads)
        kept[path] = sum(storages.values())
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="smollm2-135m", help="a bundled name (smollm2-135m, all-minilm-l6-v2) or a Hugging Face folder")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--attention", nargs="+", choices=["auto", "sdpa"], default=["auto", "sdpa"])
    args = parser.parse_args()

    checkpoint, precision = args.checkpoint, torch.bfloat16 if supports_bf16() else None
    torch.manual_seed(0)
    input_ids = torch.randint(1000, 2000, (args.batch_size, args.length))
    rows, per_call = [], None
    for attention, recompute in itertools.product(args.attention, (False, True)):
        net = build(checkpoint, pretrained=True, attention=attention, attn_dropout=0.0, dropout=0.0).train()
        if per_call is None:  # the first model's shape; the call runs on random tensors of its own
            per_call = attention_call_bytes(net, args.batch_size, args.length, precision or torch.float32)
            print(f"{checkpoint} batch {args.batch_size} x {args.length} tokens, one attention call: {per_call['matmul'] / MIB:,.1f} MiB kept "
                  f"on the matmul path, {per_call['sdpa'] / MIB:,.1f} on SDPA's", flush=True)
        blocks = recompute_blocks(net) if recompute else 0
        kept = kept_bytes(net, input_ids, precision)
        weights = sum(p.numel() for p in net.parameters())
        rows.append({"attention": attention, "activation_checkpointing": recompute, "kept_mib": round(kept / MIB),
                     "blocks": blocks, "parameters": weights})
        print(f"{checkpoint} batch {args.batch_size} x {args.length} tokens, {'bf16' if precision else 'fp32'}, attention={attention:4s} "
              f"activation_checkpointing={str(recompute).lower():5s}: {kept / MIB:8,.0f} MiB kept for the backward pass", flush=True)
        del net
        gc.collect()
        if glibc() is not None:
            glibc().malloc_trim(0)  # hand the freed pages back, or the arms' fragmented heaps add up
    weights = rows[0]["parameters"]
    print(f"beside it: the fp32 weights {weights * 4 / MIB:,.0f} MiB, their gradients as much, AdamW's two moments twice that "
          f"({weights * 16 / MIB:,.0f} MiB in all)")
    save("activations", {"checkpoint": checkpoint, "length": args.length, "batch_size": args.batch_size,
                         "precision": "bf16" if precision else "fp32",
                         "attention_call_mib": {path: round(size / MIB, 1) for path, size in per_call.items()}, "arms": rows})


if __name__ == "__main__":
    main()
