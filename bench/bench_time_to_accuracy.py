"""Time to held-out accuracies: how long `src/train.py experiment=fast` takes to first validate at >= each --targets.

    python bench/bench_time_to_accuracy.py [--targets 0.88 0.90 0.91] [--epochs N] [-- more src/train.py overrides]
    python bench/bench_time_to_accuracy.py --pair A.json B.json    # two saved runs, review by review, validation by validation

One real training run of the recipe conf/experiment/fast.yaml: the bundled BERT on the whole 22,500-review
training split, 256 tokens of each review's head and tail (at the classic 128 tokens of the head it levels
off near 85-86%), validated 4 times an epoch on the 2,500 held out, and stopped (callbacks=reach_target) as soon
as val/acc reaches the highest target. The clock is TensorBoard's: from the logger's first event (the model
built, data tokenized) to the validation that reached the target, so the figure is an upper bound at a
quarter-epoch's resolution. Results, with the CPU they ran on: bench/results/time_to_accuracy.json, which also
keeps which held-out reviews each validation got right (`callbacks.ValidationPredictions`).

Two recipes' curves differ by about a point at a step, less than one reading's sampling error on 2,500 reviews
(+-1.2 points). `--pair` compares two saved results on the same reviews at each validation both reached: A's
accuracy minus B's with a 95% paired bootstrap interval over the reviews (`bertgpt.experiments.stats`), and whether
it excludes zero. Validations are paired in order: the recipe validates at a share of an epoch, so the k-th
validation of either run follows the same training reviews whatever their batch sizes. Runs validated at different
intervals at one batch size (every 8th of an epoch against every 4th) are paired at the steps both validated after;
at different intervals and batch sizes, or every n batches at different batch sizes, they are refused. It says how
sure one seed's comparison is; the seed-to-seed spread is another matter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, machine, save

from bertgpt.cli import compose, override_of
from bertgpt.errors import UserError
from bertgpt.experiments.compare_report import read_events
from bertgpt.experiments.stats import paired_bootstrap
from bertgpt.training.callbacks import reached

RECIPE = ["experiment=fast", "model=bert"]  # what the bench trains, and where it reads the recipe's epochs from


def budget(epochs: int, max_steps: int | None) -> str:
    """A run's most training: its epochs, and its steps where a budget sets them (None: none; the schedule ends there)."""
    return f"{epochs} epoch{'s' * (epochs != 1)}" + (f" and {max_steps:,} steps" if max_steps else "")


def read_validations(run: Path) -> tuple[str, dict[int, str]]:
    """The held-out labels, and which reviews each validation got right ("1"/"0" in the split's order), by step."""
    labels, correct = None, {}
    for path in sorted((run / "val_predictions").glob("step_*.json")):
        record = json.loads(path.read_text())
        labels = "".join(map(str, record["label"]))
        correct[record["step"]] = "".join("1" if p == t else "0" for p, t in zip(record["prediction"], record["label"], strict=True))
    return labels or "", correct


def pair(a_path: Path, b_path: Path) -> None:
    """A's val/acc minus B's at each validation both reached, in order, paired over the same reviews."""
    runs = []
    for path in (a_path, b_path):
        record = json.loads(path.read_text())
        if not record.get("val_correct"):
            raise SystemExit(f"error: {path} keeps no per-review validations (val_correct): it predates them; run the bench again.")
        runs.append(record)
    a, b = runs
    if a["val_labels"] != b["val_labels"]:
        raise SystemExit(f"error: {a_path} and {b_path} validated on different held-out reviews: a paired comparison needs the same ones.")
    for name, path, run in (("A", a_path, a), ("B", b_path, b)):
        # the most training is part of the recipe: the linear schedule decays the rate to zero at its end
        print(f"{name}: {path} ({run['machine']['cpu']}, {run['machine']['precision']}; at most {budget(run['epochs'], run.get('max_steps'))}; "
              f"overrides {' '.join(run['overrides']) or 'none'})")
    intervals = [override_of(run["overrides"], "trainer.val_check_interval") or "the recipe's" for run in (a, b)]
    batch_sizes = [override_of(run["overrides"], "data.batch_size") or "the recipe's" for run in (a, b)]
    steps = [sorted(run["val_correct"], key=int) for run in (a, b)]
    if intervals[0] != intervals[1]:
        if batch_sizes[0] != batch_sizes[1]:
            raise SystemExit(f"error: {a_path} and {b_path} validated at different intervals (trainer.val_check_interval "
                             f"{intervals[0]} against {intervals[1]}) and batch sizes (data.batch_size {batch_sizes[0]} "
                             f"against {batch_sizes[1]}): no validation of one follows the same reviews as one of the "
                             "other; pair runs of the same interval or of the same batch size.")
        # At one batch size a step is a number of reviews: pair the steps both validated after (every 8th against every
        # 4th of an epoch: each of the 4th's)
        common = sorted(set(steps[0]) & set(steps[1]), key=int)
        if not common:
            raise SystemExit(f"error: {a_path} and {b_path} validated at different intervals (trainer.val_check_interval "
                             f"{intervals[0]} against {intervals[1]}) and never after the same step: nothing to pair.")
        print(f"validated at different intervals ({intervals[0]} against {intervals[1]}): paired at the {len(common)} "
              f"step{'s' * (len(common) != 1)} both validated after")
        pairs = [(steps[0].index(step) + 1, steps[1].index(step) + 1, step, step) for step in common]
    else:
        if intervals[0].isdigit() and batch_sizes[0] != batch_sizes[1]:  # Lightning reads an integer interval as batches
            raise SystemExit(f"error: {a_path} and {b_path} validated every {intervals[0]} batches at different batch sizes "
                             f"(data.batch_size {batch_sizes[0]} against {batch_sizes[1]}): their k-th validations follow "
                             "different numbers of reviews; pair runs validated at a share of an epoch "
                             "(trainer.val_check_interval=0.25) or of the same batch size.")
        pairs = [(k, k, step_a, step_b) for k, (step_a, step_b) in enumerate(zip(*steps), start=1)]
    for k_a, k_b, step_a, step_b in pairs:
        correct = [np.array([[c == "1" for c in run["val_correct"][step]]]) for run, step in ((a, step_a), (b, step_b))]
        d = paired_bootstrap(*correct)
        # the curve's (TensorBoard's) step of a validation is one less than the optimizer steps it followed
        after = f"after {int(step_a):,} steps (the curve's step {int(step_a) - 1:,})" + ("" if step_a == step_b else f", B after {int(step_b):,}")
        which = f"validation {k_a}" if k_a == k_b else f"A's validation {k_a}, B's {k_b}"
        print(f"  {which}, {after}: A {correct[0].mean():.2%}  B {correct[1].mean():.2%}  "
              f"A - B {d.mean:+.2%} [{d.low:+.2%}, {d.high:+.2%}]  {d.verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.88, 0.90, 0.91])
    parser.add_argument("--epochs", type=int, help="the most epochs to try (default: the recipe's trainer.max_epochs)")
    parser.add_argument("--pair", type=Path, nargs=2, metavar=("A", "B"), help="compare two saved results instead of training")
    parser.add_argument("overrides", nargs="*", help="more src/train.py overrides (after --)")
    args = parser.parse_args()
    if args.pair:
        pair(*args.pair)
        return
    try:  # the recipe's epochs and step budget, with the overrides' say: its schedule decays the rate over them
        trainer = compose("train", [*RECIPE, *args.overrides]).trainer
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    if args.epochs is None:
        args.epochs = int(trainer.max_epochs)
    max_steps = int(trainer.max_steps) if (trainer.max_steps or 0) > 0 else None  # -1 or null: no budget
    host = machine()
    print(f"CPU: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads", flush=True)
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, str(ROOT / "src" / "train.py"), *RECIPE, "trainer.devices=1",
            f"trainer.max_epochs={args.epochs}", "test=false", f"callbacks.reach_target.stopping_threshold={max(args.targets)}",
            *args.overrides, f"hydra.run.dir={out}",
        ]
        print("$", " ".join(["python", *command[1:-1]]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        points = read_events(Path(out)).get("val/acc", [])
        labels, correct = read_validations(Path(out))
    if not points:
        raise SystemExit("error: the run logged no val/acc; see its output above")
    best = max(points, key=lambda p: p[2])
    hits = {}
    for target in sorted(args.targets):
        hit = next(((step, seconds, acc) for step, seconds, acc in points if reached(acc, target)), None)
        hits[f"{target:.2f}"] = {"seconds": round(hit[1], 1), "step": hit[0], "val_acc": round(hit[2], 4)} if hit else None
        if hit:
            print(f"reached {target:.0%}: val/acc {hit[2]:.2%} at step {hit[0]}, {hit[1] / 60:.1f} min after the run started ({host['cpu']})")
        else:
            print(f"did not reach {target:.0%} in {budget(args.epochs, max_steps)}: best val/acc {best[2]:.2%} at step {best[0]}")
    save("time_to_accuracy", {
        "targets": hits, "overrides": args.overrides, "epochs": args.epochs, "max_steps": max_steps,
        "best_val_acc": round(best[2], 4), "curve": [(s, round(t, 1), round(a, 4)) for s, t, a in points],
        "val_labels": labels, "val_correct": correct,
    })


if __name__ == "__main__":
    main()
