"""Does torch.compile pay for `model=bert` training on this machine, once shapes are not the question?

    python bench/bench_compile.py [--modes eager static dynamic max-autotune] [--length 128] [--steps 8]

One training step of `model=bert` as conf/ sets it (dropout included; `--override model.net.dropout=null` puts
the checkpoint's hidden dropout back): forward, loss, backward, clipping, fused AdamW, the autocast precision
`src/train.py` picks here, on one fixed batch of 32 x `--length` random token ids, so every mode sees a single
shape and compiles once: `eager`; `static` (`compile(dynamic=False)`); `dynamic` (torch's default, as `compile=true` calls it);
`max-autotune` (Inductor also benchmarks its own GEMM templates); `cpp-wrapper` (static, with Inductor calling
its kernels from generated C++ rather than Python) and `aten-rng` (static, with dropout's masks drawn by ATen's
bernoulli kernel rather than Inductor's own generator, `fallback_random`), `encoder` (static, the encoder's
blocks alone: the embeddings, whose backward Inductor does slower, stay eager) and `blocks` (static, each block
compiled on its own, PyTorch's "regional compilation": the blocks are alike, so one compiled block serves them all
and compiling takes a block's time, not the encoder's), none in the default list. Each mode runs in its own process
(a fresh Inductor), prints the seconds of its first 3 steps (the compiling) and the steady ms per step after
them. A length-grouped run adds recompiles on top (`bench_train.py --compile`, with `TORCH_LOGS=recompiles`).

`--profile N` also prints, per mode, the N operators and Inductor kernels that took the most of the timed steps'
time (torch.profiler, self CPU time), so eager and compiled steps can be compared kernel by kernel.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import ROOT, machine, save

BATCH = 32
MODES = {"eager": None, "static": {"dynamic": False}, "dynamic": {}, "max-autotune": {"dynamic": False, "mode": "max-autotune-no-cudagraphs"},
         "cpp-wrapper": {"dynamic": False, "options": {"cpp_wrapper": True}},
         "aten-rng": {"dynamic": False, "options": {"fallback_random": True}},
         "encoder": {"dynamic": False}, "blocks": {"dynamic": False}}
DEFAULT_MODES = ["eager", "static", "dynamic", "max-autotune"]  # what `make bench` times


def one_mode(mode: str, length: int, steps: int, profile: int, overrides: list[str]) -> None:
    """Times `mode` in this process and prints `first_s ms_per_step`, after the profile's table when asked for."""
    import contextlib

    import hydra
    import torch

    from bertgpt import cli
    from bertgpt.host import best_precision, keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cli.compose("train", ["model=bert", *overrides]).model.net).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-5, eps=1e-8, fused=True)
    ids = torch.randint(1000, 20000, (BATCH, length))
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (BATCH,))
    # the regional modes leave the embeddings, the head and the loss eager
    if mode == "encoder":
        net.base_model.encoder.compile(**MODES[mode])
    elif mode == "blocks":
        for block in net.base_model.encoder.layer:
            block.compile(**MODES[mode])
    elif MODES[mode] is not None:
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
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else contextlib.nullcontext()
    with profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
    if profile:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile, max_name_column_width=70))
    print(f"{first:.2f} {seconds / steps * 1000:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="steps timed after the 3 first ones")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides, e.g. model.net.dropout=null")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print each mode's N costliest kernels")
    parser.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)  # a mode's own process
    args = parser.parse_args()
    if args.one:
        return one_mode(args.one, args.length, args.steps, args.profile, args.override)
    host = machine()
    print(f"CPU: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads; batch {BATCH} x {args.length}; "
          f"model=bert {' '.join(args.override) or '(as conf/ sets it)'}", flush=True)
    results = {}
    for mode in args.modes:
        command = [sys.executable, __file__, "--one", mode, "--length", str(args.length), "--steps", str(args.steps),
                   "--profile", str(args.profile), "--override", *args.override]
        # Inductor's generated kernels appear in the profile only when it is asked to record them
        env = {**os.environ, "TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE": "1"} if args.profile else None
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        *table, last = done.stdout.strip().splitlines()
        if args.profile:
            print(f"{mode}:\n" + "\n".join(table))
        first, ms = map(float, last.split())
        results[mode] = {"first_3_steps_s": first, "ms_per_step": ms, "samples_per_sec": round(BATCH * 1000 / ms, 1)}
        print(f"  {mode:<13} first 3 steps {first:6.1f} s   then {ms:7.1f} ms/step = {BATCH * 1000 / ms:5.1f} samples/s"
              + (f"   {ms / results['eager']['ms_per_step']:.2f}x eager's step time" if "eager" in results and mode != "eager" else ""), flush=True)
    save("compile", {"length": args.length, "batch_size": BATCH, "steps": args.steps, "overrides": args.override, "modes": results})


if __name__ == "__main__":
    main()
