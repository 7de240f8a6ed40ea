"""A long CPU run's memory: glibc's heap step by step, with freed memory kept, with a limit on it, and with each
Transformer block recomputed in the backward pass.

    python bench/bench_memory.py [--steps 240] [--limit-gib 7.5] [--arms kept limit] [--recipe "experiment=best"]
    python bench/bench_memory.py --epochs 1 --limit-gib 11 --arms limit   # the recipe's schedule, stopped after epoch 1
    python bench/bench_memory.py --arms kept recompute --steps 30 --recipe "model=gpt data.max_length=512 data.truncation=head_tail data.batch_size=16"
    python bench/bench_memory.py --arms kept --allocators mimalloc glibc   # the commands' allocator against glibc's malloc

Trains `src/train.py <recipe>` once per arm, each in a process of its own, and reads every `--every` steps the
process's resident set and, under glibc's malloc, its heap (mallinfo2: its size, the bytes in use, the freed bytes it
keeps). Each arm runs under each of `--allocators` (BERTGPT_ALLOCATOR; by default the commands' own, mimalloc where
installed):
- kept: freed memory kept the whole run (`callbacks.freed_memory_limit.fraction=1`);
- limit: `FreedMemoryLimit` handing it back past `--limit-gib` (default: its default share of this machine);
- recompute: freed memory kept, and `activation_checkpointing=true` (each block keeps only its input).
`--steps` runs that many steps of one epoch with a 256-review validation; `--epochs` runs the recipe unchanged
(its schedule, its full validation) and stops after that many epochs. Prints each arm's heap every `--every`
steps, its peak, samples/s, its last training loss and the step where the limit was passed, then each arm's peak
and samples/s against the first arm's; bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import shlex
import time
from pathlib import Path

import lightning as L
from common import ROOT, run_train, save

from bertgpt import host


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class HeapProbe(L.Callback):
    """Every `every` training steps, one JSON line in `path`: the step, seconds since the start, the batch's
    width, the resident set, glibc's heap (bytes from the system, in use, freed and kept) and whether freed memory
    is still kept. `stop_after_epochs` ends the fit after that many epochs (after their validation)."""

    def __init__(self, path: str, every: int = 10, stop_after_epochs: int | None = None):
        self.path, self.every, self.stop_after_epochs = Path(path), every, stop_after_epochs
        self.libc = host.glibc()
        if self.libc is not None:
            self.libc.mallinfo2.restype = MallInfo2
        self.glibc_heap = self.libc is not None and host.allocator() == "glibc"  # another allocator's heap is not glibc's

    def on_train_start(self, trainer, pl_module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self.start = self.path.open("w"), time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step != 1:
            return
        row = {"step": step, "s": round(time.perf_counter() - self.start, 1), "width": int(batch["input_ids"].shape[1]),
               "resident_gib": round(host.resident_bytes() / 2**30, 2), "kept": host.freed_memory_kept()}
        if self.glibc_heap:
            heap = self.libc.mallinfo2()
            row |= {"heap_gib": round((heap.arena + heap.hblkhd) / 2**30, 2), "in_use_gib": round((heap.uordblks + heap.hblkhd) / 2**30, 2),
                    "freed_kept_gib": round(heap.fordblks / 2**30, 2)}
        self.rows.write(json.dumps(row) + "\n")
        self.rows.flush()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.stop_after_epochs and trainer.current_epoch + 1 >= self.stop_after_epochs:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.rows.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="experiment=best", help="Hydra overrides of the run measured")
    parser.add_argument("--arms", nargs="+", choices=["kept", "limit", "recompute"], default=["kept", "limit"])
    parser.add_argument("--steps", type=int, default=240, help="steps of one epoch, a 256-review validation")
    parser.add_argument("--epochs", type=int, help="the recipe as it is, stopped after this many epochs (instead of --steps)")
    parser.add_argument("--limit-gib", type=float, help="the limit arm's resident GiB (default: FreedMemoryLimit's default share)")
    parser.add_argument("--every", type=int, default=10, help="steps between two readings")
    parser.add_argument("--allocators", nargs="+", choices=["mimalloc", "glibc"],
                        default=[host.commands_allocator()], help="BERTGPT_ALLOCATOR of each run")
    args = parser.parse_args()

    available = host.memory_limit_bytes()
    if host.glibc() is None or available is None:
        raise SystemExit("bench_memory.py reads glibc's heap and /proc: it runs on Linux with glibc only")
    fraction = round(args.limit_gib * 2**30 / available, 4) if args.limit_gib else None
    if fraction is not None and not 0 < fraction <= 1:
        raise SystemExit(f"--limit-gib {args.limit_gib}: this machine has {available / 2**30:.1f} GiB; give a limit below that")
    length = ([f"+callbacks.heap_probe.stop_after_epochs={args.epochs}"] if args.epochs
              else [f"+trainer.limit_train_batches={args.steps}", "trainer.max_epochs=1", "data.val_size=256"])
    out = ROOT / "logs" / "bench-memory" / time.strftime("%Y-%m-%d_%H-%M-%S")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), os.environ.get("PYTHONPATH")]))
    results = {}
    for arm, allocator in itertools.product(args.arms, args.allocators):
        os.environ[host.ALLOCATOR_CHOICE] = allocator
        name = arm if len(args.allocators) == 1 else f"{arm}-{allocator}"
        arm_overrides = ["callbacks.freed_memory_limit.fraction=1"] if arm != "limit" else (
            [f"callbacks.freed_memory_limit.fraction={fraction}"] if fraction else [])
        if arm == "recompute":
            arm_overrides.append("activation_checkpointing=true")
        overrides = [*shlex.split(args.recipe), *length, *arm_overrides, "test=false", "logger=csv",
                     "+callbacks.heap_probe._target_=bench_memory.HeapProbe", f"+callbacks.heap_probe.path={out / name / 'heap.jsonl'}",
                     f"+callbacks.heap_probe.every={args.every}"]
        print(f"{name}: BERTGPT_ALLOCATOR={allocator}", flush=True)
        run = run_train(name, overrides, out, ("train/samples_per_sec", "train/peak_memory_mb", "train/loss", "val/acc"))
        rows = [json.loads(line) for line in (out / name / "heap.jsonl").read_text().splitlines()]
        handed_back = next((row["step"] for row in rows if not row["kept"]), None)
        results[name] = {**run, "allocator": allocator, "handed_back_by_step": handed_back, "heap": rows}
        heap = (f", glibc's heap at the end {rows[-1]['heap_gib']} GiB ({rows[-1]['freed_kept_gib']} GiB of it freed and kept)"
                if "heap_gib" in rows[-1] else "")
        print(f"{name}: peak resident {run['train/peak_memory_mb'] / 2**10:.1f} GiB{heap}, {run['train/samples_per_sec']:.1f} samples/s, "
              f"last loss {run['train/loss']:.4f}, val/acc {run['val/acc']:.4f}" + (f"; handed back by step {handed_back}" if handed_back else ""))
        for row in rows:
            print("   ", "  ".join(f"{k} {v}" for k, v in row.items()))
    first, *others = results
    for name in others:
        peak, speed = (results[name][key] / results[first][key] for key in ("train/peak_memory_mb", "train/samples_per_sec"))
        print(f"{name} against {first}: {peak:.2f}x the peak resident memory at {speed:.2f}x the samples/s")
    save("memory", {"recipe": args.recipe, "steps": None if args.epochs else args.steps, "epochs": args.epochs,
                    "limit_gib": args.limit_gib, "memory_gib": round(available / 2**30, 1), "arms": results})


if __name__ == "__main__":
    main()
