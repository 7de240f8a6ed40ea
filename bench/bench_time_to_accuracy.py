"""Time to held-out accuracies: how long `src/train.py experiment=fast` takes to first validate at >= each --targets.

    python bench/bench_time_to_accuracy.py [--targets 0.88 0.90 0.91] [--epochs 2] [-- more src/train.py overrides]

One real training run of the recipe conf/experiment/fast.yaml: the bundled BERT on the whole 22,500-review
training split, 256 tokens of each review's head and tail (at the classic 128 tokens of the head it levels
off near 85-86%), validated 4 times an epoch on the 2,500 held out, and stopped (callbacks=reach_target) as soon
as val/acc reaches the highest target. The clock is TensorBoard's: from the logger's first event (the model
built, data tokenized) to the validation that reached the target, so the figure is an upper bound at a
quarter-epoch's resolution. Results, with the CPU they ran on: bench/results/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, save

from bertgpt.experiments.compare_report import read_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.88, 0.90, 0.91])
    parser.add_argument("--epochs", type=int, default=2, help="the most epochs to try")
    parser.add_argument("overrides", nargs="*", help="more src/train.py overrides (after --)")
    args = parser.parse_args()
    host = machine()
    print(f"CPU: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads", flush=True)
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, str(ROOT / "src" / "train.py"), "experiment=fast", "model=bert", "trainer.devices=1",
            f"trainer.max_epochs={args.epochs}", "test=false", f"callbacks.reach_target.stopping_threshold={max(args.targets)}",
            *args.overrides, f"hydra.run.dir={out}",
        ]
        print("$", " ".join(["python", *command[1:-1]]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        points = read_events(Path(out)).get("val/acc", [])
    if not points:
        raise SystemExit("error: the run logged no val/acc; see its output above")
    best = max(points, key=lambda p: p[2])
    reached = {}
    for target in sorted(args.targets):
        hit = next(((step, seconds, acc) for step, seconds, acc in points if acc >= target), None)
        reached[f"{target:.2f}"] = {"seconds": round(hit[1], 1), "step": hit[0], "val_acc": round(hit[2], 4)} if hit else None
        if hit:
            print(f"reached {target:.0%}: val/acc {hit[2]:.2%} at step {hit[0]}, {hit[1] / 60:.1f} min after the run started ({host['cpu']})")
        else:
            print(f"did not reach {target:.0%} in {args.epochs} epochs: best val/acc {best[2]:.2%} at step {best[0]}")
    save("time_to_accuracy", {
        "targets": reached, "overrides": args.overrides, "epochs": args.epochs,
        "best_val_acc": round(best[2], 4), "curve": [(s, round(t, 1), round(a, 4)) for s, t, a in points],
    })


if __name__ == "__main__":
    main()
