"""`experiment=best`'s held-out accuracy over seeds, and against another recipe on the same seeds.

    python bench/bench_best.py [--seeds 2024 2025 2026] [--against "model.lr=3e-5 trainer.max_epochs=5"] [-- overrides]
    python bench/bench_best.py --runs reports/best/runs/b-* [--against-runs reports/best/runs/d-*] --trained-on "..."

Trains `src/train.py experiment=best` once per seed (runs kept in logs/bench-best/, so they can be summarised
again with --runs), or summarises runs made already. Prints each seed's held-out accuracy and validation curve
per epoch, the training time (the sum of the epochs' times, validation excluded), the mean with a 95% bootstrap
interval that resamples reviews and seeds (`bertgpt.experiments.stats`), and with --against / --against-runs the
paired difference on the same held-out reviews. The held-out reviews are the 2,500 of the 9:1 split; the tested
checkpoint is the best epoch on them (in every run measured so far, the last). Results, with the machine:
bench/results/best.json.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import numpy as np
from common import ROOT, machine, run_train, save

from bertgpt.experiments.compare_report import read_run, train_seconds
from bertgpt.experiments.stats import bootstrap_accuracy, paired_bootstrap


def train(name: str, seeds: list[int], overrides: list[str]) -> list[Path]:
    out = ROOT / "logs" / "bench-best"
    for seed in seeds:
        run_train(f"{name}-{seed}", ["experiment=best", f"seed={seed}", *overrides], out, ("test/acc",))
    return [out / f"{name}-{seed}" for seed in seeds]


def summarise(label: str, folders: list[Path]) -> tuple[dict, np.ndarray]:
    """Each run's accuracy, curve and time, and the recipe's mean with its interval; the correctness matrix."""
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
        curve = [round(acc, 4) for _, _, acc in run.points("val/acc")]
        seconds = train_seconds(run)
        print(f"  {folder.name}: {run.metrics['test/acc']:.2%} held-out; val/acc per epoch "
              f"{', '.join(f'{a:.2%}' for a in curve)}; {seconds:,.0f} s of training, "
              f"{run.metrics.get('train/samples_per_sec', 0):,.0f} samples/s")
        per_run[folder.name] = {"test_acc": run.metrics["test/acc"], "val_acc_per_epoch": curve,
                                "train_s": round(seconds, 1), "samples_per_sec": run.metrics.get("train/samples_per_sec")}
    summary = {"mean": round(interval.mean, 4), "low": round(interval.low, 4), "high": round(interval.high, 4), "runs": per_run}
    return summary, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--against", help="a second recipe: overrides on top of experiment=best, run on the same seeds")
    parser.add_argument("--runs", type=Path, nargs="+", help="summarise these run folders instead of training")
    parser.add_argument("--against-runs", type=Path, nargs="+", help="with --runs: the second recipe's run folders")
    parser.add_argument("--trained-on", help="with --runs: the machine the runs trained on (default: this one)")
    parser.add_argument("overrides", nargs="*", help="more src/train.py overrides for the recipe (after --)")
    args = parser.parse_args()
    host = machine()
    print(f"this machine: {host['cpu']} ({host['cpu_kind']}, {host['precision']}), {host['threads']} threads"
          + (f", {host['gpu']}" if host.get("gpu") else ""), flush=True)
    if args.runs:
        recipe, against = args.runs, args.against_runs
    else:
        recipe = train("best", args.seeds, args.overrides)
        against = train("against", args.seeds, [*args.overrides, *shlex.split(args.against)]) if args.against else None
    results = {"trained_on": args.trained_on or "this machine", "overrides": args.overrides}
    results["recipe"], correct = summarise("experiment=best " + " ".join(args.overrides), recipe)
    if against:
        results["against"], other = summarise(f"against ({args.against or 'runs given'})", against)
        difference = paired_bootstrap(correct, other)
        print(f"best - against: {difference.mean:+.2%} [{difference.low:+.2%}, {difference.high:+.2%}], {difference.verdict}")
        results["difference"] = {"mean": round(difference.mean, 4), "low": round(difference.low, 4),
                                 "high": round(difference.high, 4), "verdict": difference.verdict}
    save("best", results)


if __name__ == "__main__":
    main()
