"""Does torch.compile pay for `model=bert` training on this machine, once shapes are not the question?

    python bench/bench_compile.py [--modes eager static dynamic max-autotune] [--length 128] [--steps 8]

One training step (forward, loss, backward, clipping, fused AdamW, the autocast precision `src/train.py` picks
here) on one fixed batch of 32 x `--length` random token ids, so every mode sees a single shape and compiles
once: `eager`; `static` (`compile(dynamic=False)`); `dynamic` (torch's default, as `compile=true` calls it);
`max-autotune` (Inductor also benchmarks its own GEMM templates); `cpp-wrapper` (static, with Inductor calling
its kernels from generated C++ rather than Python; not in the default list). Each mode runs in its own process
(a fresh Inductor), prints the seconds of its first 3 steps (the compiling) and the steady ms per step after
them. A length-grouped run adds recompiles on top (`bench_train.py --compile`, with `TORCH_LOGS=recompiles`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import ROOT, machine, save

BATCH = 32
MODES = {"eager": None, "static": {"dynamic": False}, "dynamic": {}, "max-autotune": {"dynamic": False, "mode": "max-autotune-no-cudagraphs"},
         "cpp-wrapper": {"dynamic": False, "options": {"cpp_wrapper": True}}}
DEFAULT_MODES = ["eager", "static", "dynamic", "max-autotune"]  # what `make bench` times


def one_mode(mode: str, length: int, steps: int) -> None:
    """Times `mode` in this process and prints `first_s ms_per_step`."""
    import torch

    from bertgpt import cli  # noqa: F401  (the resolvers)
    from bertgpt.host import best_precision, keep_freed_memory
    from bertgpt.models import library

    keep_freed_memory()
    torch.manual_seed(0)
    net = library.build("all-minilm-l6-v2", attn_dropout=0.0).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-5, eps=1e-8, fused=True)
    ids = torch.randint(1000, 20000, (BATCH, length))
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (BATCH,))
    if MODES[mode] is not None:
        net.compile(**MODES[mode])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=best_precision() == "bf16-mixed")

    def step() -> None:
        with autocast:
            logits = net(input_ids=ids, attention_mask=mask).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(3):
        step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{first:.2f} {(time.perf_counter() - start) / steps * 1000:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="steps timed after the 3 first ones")
    parser.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)  # a mode's own process
    args = parser.parse_args()
    if args.one:
        return one_mode(args.one, args.length, args.steps)
    host = machine()
    print(f"CPU: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads; batch {BATCH} x {args.length}", flush=True)
    results = {}
    for mode in args.modes:
        done = subprocess.run([sys.executable, __file__, "--one", mode, "--length", str(args.length), "--steps", str(args.steps)],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        first, ms = map(float, done.stdout.split()[-2:])
        results[mode] = {"first_3_steps_s": first, "ms_per_step": ms, "samples_per_sec": round(BATCH * 1000 / ms, 1)}
        print(f"  {mode:<13} first 3 steps {first:6.1f} s   then {ms:7.1f} ms/step = {BATCH * 1000 / ms:5.1f} samples/s"
              + (f"   {ms / results['eager']['ms_per_step']:.2f}x eager's step time" if "eager" in results and mode != "eager" else ""), flush=True)
    save("compile", {"length": args.length, "batch_size": BATCH, "steps": args.steps, "modes": results})


if __name__ == "__main__":
    main()
