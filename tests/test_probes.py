"""Linear probes per layer (bertgpt.experiments.probes, src/probe.py) on tiny random models and toy data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import run_script, toy_reviews, write_csv

from bertgpt.data.collate import IGNORE, PadCollator
from bertgpt.data.reviews import IMDBDataModule
from bertgpt.data.tagging import TaggingDataModule
from bertgpt.errors import UserError
from bertgpt.experiments import probes


@pytest.fixture
def reviews_csv(tmp_path):
    return write_csv(tmp_path / "toy.csv", *toy_reviews(120))


@pytest.fixture
def brown_folder(tmp_path):
    """Twenty tagged sentences in the Brown layout (16 / 2 / 2 after the split)."""
    folder = tmp_path / "brown"
    folder.mkdir()
    lines = [f"\tThe/at jury/nn said/vbd {i}/cd things/nns ./." if i % 2 else "\tIt/pps did/dod n't/* go/vb up/rp ./." for i in range(20)]
    (folder / "ca01").write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return folder


def backbone(checkpoint: str) -> torch.nn.Module:
    return probes.load_backbone(probes.checkpoint_folder(checkpoint), torch.device("cpu"))


def test_features_hold_every_layer_for_every_item(tiny_bert, tiny_gpt2, reviews_csv, brown_folder, tmp_path):
    for checkpoint in (tiny_bert, tiny_gpt2):
        dm = IMDBDataModule(checkpoint, path=str(reviews_csv), max_length=32, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        features, labels = probes.split_features(backbone(checkpoint), dm.splits["test"], dm.collator(), 5, per_word=False)
        assert sorted(features) == sorted(probes.POOLINGS)
        assert all(f.shape == (3, 12, 32) for f in features.values())  # embeddings + 2 blocks, 12 held-out reviews, 32 wide
        assert labels.tolist() == dm.splits["test"].labels.tolist()  # the split's order, though batched longest first
    dm = TaggingDataModule(tiny_bert, path=str(brown_folder), cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    split = dm.splits["train"]
    features, labels = probes.split_features(backbone(tiny_bert), split, dm.collator(), 3, per_word=True)
    tags = split.token_labels[split.token_labels != IGNORE]
    assert list(features) == [probes.WORD] and features[probes.WORD].shape == (3, len(tags), 32)
    assert labels.tolist() == tags.tolist() and len(tags) == sum(map(len, dm.raw_splits()["train"]))


@pytest.mark.parametrize("side", ["right", "left"])
def test_first_mean_and_last_read_the_real_tokens_under_either_padding(tiny_gpt2, side):
    model = backbone(tiny_gpt2)
    reviews = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([10, 11]), torch.tensor([12, 13, 14])]
    batch = PadCollator(0, side)([(ids, 0) for ids in reviews])
    hidden = probes.hidden_states(model, batch)
    pooled = probes.pool(hidden, batch["attention_mask"])
    width = batch["input_ids"].size(1)
    for row, ids in enumerate(reviews):
        first, last = (0, len(ids) - 1) if side == "right" else (width - len(ids), width - 1)
        assert batch["input_ids"][row, last] == ids[-1] and batch["input_ids"][row, first] == ids[0]
        torch.testing.assert_close(pooled["last"][:, row], hidden[:, row, last])
        torch.testing.assert_close(pooled["first"][:, row], hidden[:, row, first])
        torch.testing.assert_close(pooled["mean"][:, row], hidden[:, row, first : last + 1].mean(1))
        # the positions count real tokens: the review alone, unpadded, has the same states
        alone = probes.hidden_states(model, {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)})
        torch.testing.assert_close(pooled["last"][:, row], alone[:, 0, -1], atol=1e-5, rtol=1e-5)


def test_bf16_features_are_close_to_fp32(tiny_bert):
    model = backbone(tiny_bert)
    batch = PadCollator(0)([(torch.tensor([101, 7, 8, 9, 102]), 0), (torch.tensor([101, 10, 102]), 0)])
    full, half = probes.hidden_states(model, batch), probes.hidden_states(model, batch, bf16=True)
    assert half.dtype == torch.float32 and half.shape == full.shape == (3, 2, 5, 32)
    assert not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)


def linear_label(n: int = 600, width: int = 16, seed: int = 0):
    """Two layers of features for n items: layer 1 carries a binary label along one direction, layer 0 is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    noise = rng.normal(size=(n, width))
    carrying = noise.copy()
    carrying[:, 3] += 3.0 * (2 * y - 1)
    return np.stack([noise, carrying]).astype(np.float32), y, rng


def test_a_linear_label_is_found_and_shuffled_labels_are_chance():
    features, y, rng = linear_label()
    train, test = slice(0, 400), slice(400, 600)
    fold = probes.selection_folds(np.ones(400, dtype=np.int64), 5, seed=0)
    split = lambda labels, part: ({"mean": features[:, part]}, labels[part])  # noqa: E731
    found = probes.probe_layers(split(y, train), split(y, test), fold, seed=0, resamples=500)
    assert found["accuracy"]["mean"][1] > 0.97 and 0.35 < found["accuracy"]["mean"][0] < 0.65
    assert found["selection"]["mean"][1] > 0.95 and 0.3 < found["selection"]["mean"][0] < 0.7
    assert found["best"] == {"pooling": "mean", "layer": 1, "acc": found["accuracy"]["mean"][1], "selection_acc": found["selection"]["mean"][1]}
    low, high = found["interval"]["mean"][1]
    assert low <= found["best"]["acc"] <= high
    shuffled = rng.permutation(y)
    chance = probes.probe_layers(split(shuffled, train), split(shuffled, test), fold, seed=0, resamples=500)
    assert all(0.35 < acc < 0.65 for acc in chance["accuracy"]["mean"])


def test_folds_fitted_in_worker_processes_give_the_same_probe(monkeypatch):
    """Large fits send their folds to worker processes, small ones fit them in turn: the results are the same."""
    features, y, _ = linear_label()
    split = lambda part: ({"mean": features[:, part]}, y[part])  # noqa: E731
    fold = probes.selection_folds(np.ones(400, dtype=np.int64), 5, seed=0)
    import sklearn.model_selection

    fit_folds, jobs = sklearn.model_selection.cross_val_predict, []
    monkeypatch.setattr(sklearn.model_selection, "cross_val_predict", lambda *a, n_jobs, **k: jobs.append(n_jobs) or fit_folds(*a, n_jobs=n_jobs, **k))
    results = []
    for threshold in (0, features[0, :400].size + 1):  # every fit in workers; none
        monkeypatch.setattr(probes, "PARALLEL_FOLDS_FROM", threshold)
        results.append(probes.probe_layers(split(slice(0, 400)), split(slice(400, 600)), fold, seed=0, resamples=200))
    assert jobs == [min(5, os.cpu_count())] * 2 + [1] * 2  # two layers each time
    in_workers, in_turn = results
    assert in_workers["selection"] == in_turn["selection"] and in_workers["best"] == in_turn["best"]


def test_the_probe_is_chosen_without_the_test_labels():
    """Whatever the test split's labels, the same (layer, pooling) is chosen: here the one that carries the label in
    training, although on test labels that are noise another layer may read higher by chance."""
    features, y, rng = linear_label()
    train = ({"mean": features[:, :400], "first": features[::-1, :400]}, y[:400])
    fold = probes.selection_folds(np.ones(400, dtype=np.int64), 5, seed=0)
    chosen = []
    for labels in (y[400:], rng.permutation(y[400:]), 1 - y[400:]):
        result = probes.probe_layers(train, ({"mean": features[:, 400:], "first": features[::-1, 400:]}, labels), fold, seed=0, resamples=200)
        chosen.append((result["best"]["pooling"], result["best"]["layer"]))
        assert result["test_max"]["acc"] == max(max(a) for a in result["accuracy"].values()) >= result["best"]["acc"]
    assert chosen == [("mean", 1)] * 3  # "mean" comes first, and ties go to the first candidate
    assert result["best"]["acc"] < 0.05 and result["test_max"] == {"pooling": "mean", "layer": 0, "acc": result["accuracy"]["mean"][0]}


def test_the_selection_folds_keep_whole_examples():
    counts = np.array([3, 1, 4, 2, 5, 2, 3, 1, 2, 2, 1])  # words per sentence
    fold = probes.selection_folds(counts, 5, seed=1)
    assert fold.shape == (counts.sum(),)
    per_sentence = np.split(fold, np.cumsum(counts)[:-1])
    assert all(len(set(part)) == 1 for part in per_sentence)  # a sentence's words are in one fold
    sentences_per_fold = np.bincount([part[0] for part in per_sentence], minlength=5)
    assert sorted(sentences_per_fold) == [2, 2, 2, 2, 3]  # 11 sentences dealt into 5 folds
    assert np.array_equal(fold, probes.selection_folds(counts, 5, seed=1)) and not np.array_equal(fold, probes.selection_folds(counts, 5, seed=2))
    for folds in (1, 12, 2.5, True):
        with pytest.raises(UserError, match=f"probe.selection_folds={folds}: "):
            probes.selection_folds(counts, folds, seed=1)


def test_the_choice_reads_out_of_fold_predictions_only():
    """Each item's selection prediction comes from a fit without its fold: a layer that memorises (a feature that
    names each item) reads perfectly on its training items but no better than chance on the folds it did not see."""
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    identity = np.eye(n, dtype=np.float32) * 10  # each item its own direction: learnable in-sample, useless out of it
    weak = np.zeros((n, n), dtype=np.float32)
    weak[:, 0] = (2 * y - 1) + rng.normal(scale=1.5, size=n)  # the label, noisily
    fold = probes.selection_folds(np.ones(n, dtype=np.int64), 5, seed=0)
    result = probes.probe_layers(({"mean": np.stack([identity, weak])}, y), ({"mean": np.stack([identity, weak])}, y), fold, seed=0, resamples=100)
    assert result["accuracy"]["mean"][0] == 1.0  # tested on its own training items, the memoriser is perfect
    assert 0.3 < result["selection"]["mean"][0] < 0.7 < result["selection"]["mean"][1]
    assert (result["best"]["pooling"], result["best"]["layer"]) == ("mean", 1)


def test_a_fold_without_both_classes_is_one_error():
    y = np.array([0, 1] + [0] * 8)
    features = np.random.default_rng(0).normal(size=(1, 10, 4)).astype(np.float32)
    fold = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])  # fitting without fold 0 sees only label 0
    with pytest.raises(UserError, match="without its selection fold 0 holds only label 0.*probe.selection_folds"):
        probes.probe_layers(({"mean": features}, y), ({"mean": features}, y), fold, seed=0, resamples=10)


def probe_run(tmp_path, checkpoint, data, *extra, name="run"):
    run = tmp_path / name
    result = run_script("probe", f"checkpoint={checkpoint}", f"data.path={data}", f"data.cache_dir={tmp_path / 'cache'}",
                        "data.max_length=32", "probe.resamples=500", f"hydra.run.dir={run}", *extra)
    return result, run


def test_cli_writes_consistent_files_and_reruns_from_the_cache(tiny_bert, reviews_csv, tmp_path, monkeypatch):
    result, run = probe_run(tmp_path, tiny_bert, reviews_csv, "data.val_size=10")
    assert result.returncode == 0, result.stderr[-3000:]
    report, metrics, predictions = (json.loads((run / f).read_text()) for f in ("probes.json", "metrics.json", "predictions.json"))
    assert report["task"] == "sentiment" and report["n_layers"] == 2 and report["layers"] == [0, 1, 2]
    assert report["n_train"] == 108 and report["n_test"] == 10 and not report["from_cache"]
    assert sorted(report["accuracy"]) == sorted(probes.POOLINGS) and all(len(a) == 3 for a in report["accuracy"].values())
    best = report["best"]
    assert best["acc"] == report["accuracy"][best["pooling"]][best["layer"]] <= report["test_max"]["acc"] == max(max(a) for a in report["accuracy"].values())
    assert best["selection_acc"] == max(max(a) for a in report["selection"].values()) == report["selection"][best["pooling"]][best["layer"]]
    assert report["selection_folds"] == 5
    assert np.mean(np.equal(predictions["label"], predictions["prediction"])) == pytest.approx(best["acc"])
    assert predictions["labels"] == ["negative", "positive"] and len(predictions["label"]) == 10
    assert metrics["test/acc"] == best["acc"] and metrics["test/samples"] == 10
    assert (metrics["probe/best_layer"], metrics["probe/best_pooling"]) == (best["layer"], best["pooling"])
    # the held-out reviews of a src/train.py run with the same data options, in its order
    dm = IMDBDataModule(tiny_bert, path=str(reviews_csv), max_length=32, val_size=10, cache_dir=str(tmp_path / "cache"))
    assert predictions["label"] == dm.raw_splits()["test"].labels

    monkeypatch.setattr(probes, "load_backbone", lambda *a: pytest.fail("the model ran again"))
    result, rerun = probe_run(tmp_path, tiny_bert, reviews_csv, "data.val_size=10", name="rerun")
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((rerun / "probes.json").read_text())
    assert again["from_cache"] and again["accuracy"] == report["accuracy"] and again["interval"] == report["interval"]
    assert "features from cache" in result.stdout + result.stderr


def test_cli_pos_probes_every_test_word(tiny_bert, brown_folder, tmp_path):
    result, run = probe_run(tmp_path, tiny_bert, brown_folder, "task=pos")
    assert result.returncode == 0, result.stderr[-3000:]
    report, predictions = (json.loads((run / f).read_text()) for f in ("probes.json", "predictions.json"))
    dm = TaggingDataModule(tiny_bert, path=str(brown_folder), cache_dir=str(tmp_path / "cache"))
    words = sum(map(len, dm.raw_splits()["test"]))
    assert report["task"] == "pos" and list(report["accuracy"]) == ["word"] and report["n_test"] == len(predictions["label"]) == words
    assert np.mean(np.equal(predictions["label"], predictions["prediction"])) == pytest.approx(report["best"]["acc"])
    assert predictions["labels"][:3] == ["NOUN", "VERB", "ADJ"]
    assert predictions["words"] == [len(sentence) for sentence in dm.raw_splits()["test"]]  # the intervals draw whole sentences


@pytest.mark.parametrize(("args", "message"), [
    (["task=nope"], "error: task=nope: unknown task. Choose one of pos, sentiment."),
    (["checkpoint=no-such-model"], "error: checkpoint=no-such-model: neither a bundled model"),
    (["checkpoint=run/checkpoints/last.ckpt"], "error: checkpoint=run/checkpoints/last.ckpt: a training checkpoint"),
    (["precision=16-mixed"], "error: precision=16-mixed: choose one of 32-true, bf16-mixed"),
])
def test_bad_input_is_one_error_line(args, message, tmp_path):
    result = run_script("probe", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
