"""Attention alone, forward + backward: PyTorch's SDPA against our matmul path, before and after keeping freed memory.

    python bench/bench_attention.py [--lengths 64 128 192 256 384 512] [--batch 32] [--heads 12] [--head-dim 32] [--dtype fp32]

One layer's attention of `model=bert` (all-MiniLM-L6-v2: 12 heads of 32) on a (B, heads, T, head_dim) batch
whose rows have random lengths in [T/2, T] (a key-padding mask), at the training precision (bf16 where the
CPU has it). `sdpa` is `F.scaled_dot_product_attention` as PyTorch dispatches it (its fused flash kernel on
a CPU); `matmul` is `bertgpt.models.attention.matmul_attention`, what `model.net.attention=auto` runs on a
CPU. Both are timed first with glibc's default allocator, then after `bertgpt.host.keep_freed_memory()`,
which the entry points call: the score matrices pass glibc's 32 MB mmap threshold from T = 224 at this shape.
Figures: milliseconds (best of --repeats) and sdpa / matmul. Results: bench/results/attention.json.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import best_of, save

from bertgpt.host import keep_freed_memory, supports_bf16
from bertgpt.models.attention import matmul_attention

KERNELS = {"sdpa": F.scaled_dot_product_attention, "matmul": matmul_attention}


def time_layer(kernel, T: int, args, dtype: torch.dtype) -> float:
    """Milliseconds for one forward + backward of `kernel` at length T."""
    g = torch.Generator().manual_seed(T)
    shape = (args.batch, args.heads, T, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    lengths = torch.randint(T // 2, T + 1, (args.batch,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T): the keys each row may see
    grad = torch.randn(shape, generator=g, dtype=dtype)

    def step():
        kernel(q, k, v, attn_mask=mask).backward(grad)

    step()  # warm the kernels and the allocator
    return 1000 * best_of(step, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 192, 256, 384, 512])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["training", "fp32", "bf16"], default="training",
                        help="training: the training precision here (bf16 where the CPU has it, else fp32)")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype, torch.bfloat16 if supports_bf16() else torch.float32)
    print(f"attention forward + backward, ms: batch {args.batch}, {args.heads} heads of {args.head_dim}, {dtype}, "
          f"{torch.get_num_threads()} threads", flush=True)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for allocator in ("glibc-default", "freed-memory-kept"):
        if allocator == "freed-memory-kept" and not keep_freed_memory():
            print("  (not glibc: the allocator setting does not apply here)")
            break
        figures[allocator] = {}
        for T in args.lengths:
            ms = {name: round(time_layer(kernel, T, args, dtype), 2) for name, kernel in KERNELS.items()}
            ms["sdpa_over_matmul"] = round(ms["sdpa"] / ms["matmul"], 2)
            figures[allocator][str(T)] = ms
            print(f"  {allocator:<18} T={T:<4} sdpa {ms['sdpa']:7.1f}  matmul {ms['matmul']:7.1f}  "
                  f"sdpa/matmul {ms['sdpa_over_matmul']:.2f}x", flush=True)
    save("attention", {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim, "dtype": str(dtype),
                       "repeats": args.repeats, "ms": figures})


if __name__ == "__main__":
    main()
