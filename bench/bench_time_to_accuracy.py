"""Time to held-out accuracies: how long `src/train.py model=bert` takes to first validate at >= each --targets.

    python bench/bench_time_to_accuracy.py [--targets 0.88 0.90 0.91] [--epochs 4] [-- more src/train.py overrides]

One real training run (the whole 22,500-review training split, validated 4 times an epoch on the 2,500 held
out), stopped by Lightning's EarlyStopping as soon as val/acc reaches the highest target. The defaults read 256 tokens,
first quarter and last three quarters of each review (data.truncation=head_tail): at the classic 128 tokens
the bundled 6-layer BERT levels off near 85-86%. The clock is TensorBoard's: from the logger's first event
(the model built, data tokenized) to the validation that reached the target, so the figure is an upper bound
at a quarter-epoch's resolution. On the 2-core CPU of docs/performance.md the first validation, after 5,600
reviews, already read 88.1%: 3.4 minutes. Results: bench/results/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, save

from bertgpt.experiments.compare_report import read_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.88, 0.90, 0.91])
    parser.add_argument("--epochs", type=int, default=4, help="the most epochs to try")
    parser.add_argument("overrides", nargs="*", help="more src/train.py overrides (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, str(ROOT / "src" / "train.py"), "model=bert", "trainer.devices=1",
            "data.max_length=256", "data.truncation=head_tail", f"trainer.max_epochs={args.epochs}",
            "++trainer.val_check_interval=0.25", "test=false",
            "+callbacks.reach_target._target_=lightning.pytorch.callbacks.EarlyStopping",
            "+callbacks.reach_target.monitor=val/acc", "+callbacks.reach_target.mode=max",
            f"+callbacks.reach_target.stopping_threshold={max(args.targets)}", "+callbacks.reach_target.patience=1000",
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
            print(f"reached {target:.0%}: val/acc {hit[2]:.2%} at step {hit[0]}, {hit[1] / 60:.1f} min after the run started")
        else:
            print(f"did not reach {target:.0%} in {args.epochs} epochs: best val/acc {best[2]:.2%} at step {best[0]}")
    save("time_to_accuracy", {
        "targets": reached, "overrides": args.overrides, "epochs": args.epochs,
        "best_val_acc": round(best[2], 4), "curve": [(s, round(t, 1), round(a, 4)) for s, t, a in points],
    })


if __name__ == "__main__":
    main()
