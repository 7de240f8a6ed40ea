"""`make sweep`: Hydra multirun with the Optuna sweeper, ending in a table of trials sorted by the metric Optuna
maximises (optimized_metric: val/acc_best)."""

from __future__ import annotations

import re

from conftest import run_script


def test_optuna_sweep_runs_trials_and_prints_them_best_first(tiny_bert, toy_csv, tmp_path):
    result = run_script(
        "train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", f"model.net.checkpoint={tiny_bert}",
        f"data.path={toy_csv}", "data.max_length=32", "model.schedule=constant", "test=false", f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("Trials sorted by val/acc_best "):]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 3
    accuracies = [float(row.split("|")[3]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    header = table.splitlines()[1]
    assert header.startswith("| rank | trial | val/acc_best |")
    assert header.endswith("| model.lr | data.batch_size | model.warmup_ratio |")  # the searched parameters only
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    assert (sweep_dir / "trials.md").read_text().count("\n") == 5  # header, rule, 3 trials
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 3
