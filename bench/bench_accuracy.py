"""A recipe's held-out accuracy over seeds, and paired against a second recipe on the same seeds and reviews.

    python bench/bench_accuracy.py [--recipe experiment=best] [--seeds 2024 2025 2026] [--against "model.lr=3e-5 trainer.max_epochs=5"]
    python bench/bench_accuracy.py --recipe "model=bert" --seeds 2024 --against "model.net.dropout=0.0"
    python bench/bench_accuracy.py --runs reports/best/runs/best-* [--against-runs reports/best/runs/epochs5-*] --trained-on "..."

Trains `src/train.py <recipe>` once per seed, and `<recipe> <against>` likewise (run folders kept under
logs/bench-accuracy/<time>/, so they can be summarised again with --runs), or summarises runs made already.
Prints each seed's held-out accuracy, its validation curve (val/acc at each validation's step), the training time
(the sum of the epochs' times, validation excluded), the mean with a 95% bootstrap interval that resamples reviews
and seeds (`bertgpt.experiments.stats`), and the paired difference on the same held-out reviews. The held-out reviews are
the 2,500 of the 9:1 split, and the tested checkpoint is the best epoch on them: a recipe whose best epoch is
not its last has been chosen on its test set (the curve shows it). Results, with the machine:
bench/results/accuracy.json. `make bench-best` runs it on `experiment=best`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine, run_train, save

from bertgpt.experiments.compare_report import read_run, train_seconds
from bertgpt.experiments.stats import bootstrap_accuracy, paired_bootstrap


def rounded(interval) -> dict:
    """An `Interval` or `Difference` as JSON: its fields, the numbers to 4 places."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(interval).items()}


def train(out: Path, name: str, seeds: list[int], overrides: list[str]) -> list[Path]:
    for seed in seeds:
        run_train(f"{name}-{seed}", [*overrides, f"seed={seed}"], out, ("test/acc",))
    return [out / f"{name}-{seed}" for seed in seeds]


def summarise(label: str, folders: list[Path]) -> tuple[dict, np.ndarray]:
    """Each run's accuracy, curve and time, and the recipe's mean with its interval; the correctness matrix."""
    unfinished = [str(f) for f in folders if not (f / "metrics.json").is_file()]
    if unfinished:
        raise SystemExit(f"error: no metrics.json in {', '.join(unfinished)}: not a finished src/train.py run folder")
    runs = [read_run(folder.parent, folder.name, {}) for folder in folders]
    missing = [str(f) for f, r in zip(folders, runs, strict=True) if r.correct is None]
    if missing:
        raise SystemExit(f"error: no predictions.json in {', '.join(missing)}: run src/train.py with test=true there")
    correct = np.stack([r.correct for r in runs])
    interval = bootstrap_accuracy(correct)
    print(f"{label}: {interval.mean:.2%} [{interval.low:.2%}, {interval.high:.2%}] over {len(runs)} seed(s), "
          f"{correct.shape[1]:,} held-out reviews")
    per_run = {}
    for folder, run in zip(folders, runs, strict=True):
        curve = [(step, round(acc, 4)) for step, _, acc in run.points("val/acc")]  # one per validation
        seconds = train_seconds(run)
        print(f"  {folder.name}: {run.metrics['test/acc']:.2%} held-out; val/acc at steps "
              f"{', '.join(f'{s:,}: {a:.2%}' for s, a in curve)}; {seconds:,.0f} s of training, "
              f"{run.metrics.get('train/samples_per_sec', 0):,.0f} samples/s in the last epoch")
        per_run[folder.name] = {"test_acc": run.metrics["test/acc"], "val_acc_by_step": curve,
                                "train_s": round(seconds, 1), "samples_per_sec": run.metrics.get("train/samples_per_sec")}  # the last epoch's
    summary = {**rounded(interval), "runs": per_run}
    return summary, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="experiment=best", help="src/train.py overrides, as one string")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--against", help="a second recipe: overrides on top of --recipe, run on the same seeds")
    parser.add_argument("--runs", type=Path, nargs="+", help="summarise these run folders instead of training")
    parser.add_argument("--against-runs", type=Path, nargs="+", help="with --runs: the second recipe's run folders")
    parser.add_argument("--trained-on", help="with --runs: the machine the runs trained on (default: this one)")
    args = parser.parse_args()
    host = machine()
    print(f"this machine: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads"
          + (f", {host['gpu']}" if host.get("gpu") else ""), flush=True)
    recipe_overrides = shlex.split(args.recipe)
    if args.runs:
        recipe, against = args.runs, args.against_runs
    else:
        out = ROOT / "logs" / "bench-accuracy" / time.strftime("%Y-%m-%d_%H-%M-%S")
        recipe = train(out, "recipe", args.seeds, recipe_overrides)
        against = train(out, "against", args.seeds, [*recipe_overrides, *shlex.split(args.against)]) if args.against else None
    results = {"trained_on": args.trained_on or "this machine", "recipe_overrides": args.recipe, "against_overrides": args.against}
    results["recipe"], correct = summarise(args.recipe if not args.runs else "recipe (runs given)", recipe)
    if against:
        results["against"], other = summarise(f"{args.recipe} {args.against}" if args.against else "against (runs given)", against)
        difference = paired_bootstrap(correct, other)
        print(f"recipe - against: {difference.mean:+.2%} [{difference.low:+.2%}, {difference.high:+.2%}], {difference.verdict}")
        results["difference"] = rounded(difference)
    save("accuracy", results)


if __name__ == "__main__":
    main()
