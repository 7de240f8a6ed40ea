"""The logger and callback options beyond the defaults: the CSV table every run keeps, early stopping, and the
optional MLflow / W&B loggers' clear error when their package is missing."""

import csv
import importlib.util

import pytest
from conftest import only_run, run_script, tiny_overrides


def val_rows(run) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/acc")]


def test_every_run_keeps_a_csv_table_beside_tensorboard(reference):
    rows = val_rows(reference)
    assert len(rows) == 2  # one validation per epoch, two epochs
    assert all(0.0 <= float(row["val/acc"]) <= 1.0 for row in rows)
    assert list((reference / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_early_stopping_stops_when_val_acc_stalls(tiny_bert, workdir, fresh_logs):
    # An improvement of a whole point of accuracy is impossible: the second validation is already "no better".
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, fresh_logs, "callbacks=early_stopping", "trainer.max_epochs=5",
                                                 "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1.0"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(val_rows(only_run(fresh_logs))) == 2  # of the 5 epochs asked for
    assert "did not improve" in result.stdout + result.stderr


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_an_optional_logger_without_its_package_names_the_extra(package, tiny_bert, workdir, fresh_logs):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, fresh_logs, f"logger={package}"))
    assert result.returncode == 2
    assert f"pip install '.[{package}]'" in result.stderr
    assert not list(fresh_logs.rglob("*.ckpt"))
