"""The POS-tagging task: the token classifier learns, and train / eval / predict run end to end for task=pos."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import run_script

from bertgpt.data.tagging import TaggingDataModule
from bertgpt.tasks.tagging import TokenClassifier

LEXICON = {
    "DET": "the a this that every".split(),
    "NOUN": "cat dog film actor story plot".split(),
    "VERB": "saw liked watched made told".split(),
    "ADJ": "old young dull great".split(),
    ".": [".", "!"],
}


def tagged_sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """DET (ADJ) NOUN VERB DET NOUN . sentences: each word has one tag, which a model that learns anything finds."""
    rng = random.Random(seed)
    pick = lambda tag: (rng.choice(LEXICON[tag]), tag)  # noqa: E731
    sentences = []
    for _ in range(n):
        subject = [pick("DET")] + ([pick("ADJ")] if rng.random() < 0.5 else []) + [pick("NOUN")]
        sentences.append(subject + [pick("VERB"), pick("DET"), pick("NOUN"), pick(".")])
    return sentences


def write_columns(path: Path, sentences) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tagged_file(tmp_path) -> Path:
    return write_columns(tmp_path / "tagged.txt", tagged_sentences(240))


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_token_classifier_drives_the_loss_down(fixture, request, tagged_file, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    L.seed_everything(0)
    dm = TaggingDataModule(tokenizer=checkpoint, path=str(tagged_file), batch_size=16, max_length=32, cache_dir=str(tmp_path))
    model = TokenClassifier(net={"_target_": "bertgpt.models.library.build", "checkpoint": checkpoint}, lr=3e-3, warmup_ratio=0.1,
                            **dm.task_options())
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = model.eval().step(batch)[0].item()
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0)
    trainer.fit(model.train(), datamodule=dm)
    metrics = trainer.callback_metrics
    assert metrics["val/loss"].item() < 0.3 * before, (before, metrics)
    # A decoder tags each word from its left context only: "the" before an adjective or a noun is still DET, but
    # ADJ vs NOUN after "the" is a coin toss for a model that cannot see the next word. BERT sees it.
    assert metrics["val/acc"].item() >= (0.95 if fixture == "tiny_bert" else 0.85), metrics


@pytest.fixture(scope="module")
def pos_run(tiny_bert, tmp_path_factory) -> Path:
    """One task=pos training run on the tiny BERT: the CLI tests below read what it left."""
    folder = tmp_path_factory.mktemp("pos")
    data = write_columns(folder / "tagged.txt", tagged_sentences(240, seed=1))
    result = run_script("train", "task=pos", f"model.net.checkpoint={tiny_bert}", f"data.path={data}", "model.lr=3e-3",
                        "trainer.max_epochs=3", "data.batch_size=16", f"paths.log_dir={folder / 'logs'}", f"data.cache_dir={folder / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (folder / "logs" / "train" / "runs").iterdir()
    return run


def test_pos_train_writes_word_metrics_the_per_tag_table_and_the_baseline(pos_run):
    metrics = json.loads((pos_run / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.9 and 0 < metrics["test/f1"] <= 1
    assert 0.3 < metrics["test/baseline_acc"] <= 1  # the majority tag per word, on the same test sentences
    assert set(metrics["per_tag"]) == {".", "ADJ", "DET", "NOUN", "VERB"}
    assert all(0 <= v <= 1 for tag in metrics["per_tag"].values() for v in tag.values())
    assert "| NOUN |" in (pos_run / "per_tag.md").read_text()


def test_pos_test_saves_each_sentences_words_in_the_splits_order(pos_run):
    """predictions.json for tagging: every test word's tag and prediction, sentence by sentence in the split's order
    (not the loader's length-sorted one), with each sentence's word count; its accuracy is test/acc."""
    saved = json.loads((pos_run / "predictions.json").read_text())
    metrics = json.loads((pos_run / "metrics.json").read_text())
    assert set(saved["labels"]) == set(metrics["per_tag"]) and sum(saved["words"]) == len(saved["label"]) == len(saved["prediction"])
    assert np.equal(saved["label"], saved["prediction"]).mean() == pytest.approx(metrics["test/acc"], abs=1e-6)
    # tagged_sentences(240, seed=1) split 80/10/10: 24 test sentences; their own tags, regrouped, are the labels
    assert len(saved["words"]) == 24 and min(saved["words"]) >= 1


def test_pos_validations_keep_each_words_prediction(pos_run):
    """One val_predictions file per epoch, flat over the words with each sentence's count; the best of them is val/acc_best."""
    saved = [json.loads(path.read_text()) for path in sorted((pos_run / "val_predictions").iterdir())]
    assert [v["epoch"] for v in saved] == [0, 1, 2] and saved[0]["step"] < saved[1]["step"] < saved[2]["step"]
    assert all(sum(v["words"]) == len(v["label"]) == len(v["prediction"]) and len(v["words"]) == 24 for v in saved)
    accuracies = [np.equal(v["label"], v["prediction"]).mean() for v in saved]
    metrics = json.loads((pos_run / "metrics.json").read_text())
    assert max(accuracies) == pytest.approx(metrics["val/acc_best"], abs=1e-6)


def test_pos_eval_reproduces_the_test_accuracy(pos_run, tmp_path):
    result = run_script("eval", f"ckpt_path={pos_run}/checkpoints/last.ckpt", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split(": ") for line in result.stdout.splitlines() if line.startswith("test/"))
    trained = json.loads((pos_run / "metrics.json").read_text())
    assert float(printed["test/acc"]) == pytest.approx(trained["test/acc"], abs=1e-4)
    assert float(printed["test/baseline_acc"]) == pytest.approx(trained["test/baseline_acc"], abs=1e-4)


def test_pos_eval_on_another_file_tests_every_sentence(pos_run, tmp_path):
    """17 new sentences, as a Parquet file: all of them tested, with the model's tag ids; no baseline (no training
    split); a tag the model never learnt is one clear error."""
    import datasets

    sentences = tagged_sentences(17, seed=7)
    parquet = tmp_path / "new.parquet"
    datasets.Dataset.from_dict({"tokens": [[w for w, _ in s] for s in sentences], "tags": [[t for _, t in s] for s in sentences]}).to_parquet(parquet)
    result = run_script("eval", f"ckpt_path={pos_run}/checkpoints/last.ckpt", f"data.path={parquet}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Testing on all 17 sentences of {parquet}" in result.stdout + result.stderr
    (run,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/samples"] == 17 and metrics["test/acc"] >= 0.9 and "test/baseline_acc" not in metrics
    assert set(metrics["per_tag"]) == {".", "ADJ", "DET", "NOUN", "VERB"}
    unknown = write_columns(tmp_path / "unknown.txt", [[("the", "DET"), ("zebra", "PROPN")]])
    result = run_script("eval", f"ckpt_path={pos_run}/checkpoints/last.ckpt", f"data.path={unknown}", f"paths.log_dir={tmp_path / 'logs2'}")
    assert result.returncode == 2 and "tags the model was not trained on: PROPN" in result.stderr, result.stderr[-2000:]


def test_pos_predict_prints_one_tag_per_word(pos_run, tmp_path):
    result = run_script("predict", f"ckpt_path={pos_run}/checkpoints/last.ckpt", "text=the old dog liked a story .", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if "/" in line]
    pairs = [token.rsplit("/", 1) for token in line.split()]
    assert [w for w, _ in pairs] == "the old dog liked a story .".split()
    assert [t for _, t in pairs] == ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "."]


def test_pos_with_a_reviews_file_is_one_clear_error(toy_csv, tiny_bert, tmp_path):
    result = run_script("train", "task=pos", f"model.net.checkpoint={tiny_bert}", f"data.path={toy_csv}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "task=pos" in result.stderr and "task=sentiment" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "train").exists() or not any((tmp_path / "train" / "runs").iterdir())


def test_bio_tags_get_seqeval_entity_f1(tiny_bert, tmp_path):
    rng = random.Random(0)
    people, places = "anna bob carl dora".split(), "paris rome oslo".split()
    sentences = []
    for _ in range(120):
        sentences.append([(rng.choice(people), "B-PER"), ("met", "O"), ("him", "O"), ("in", "O"), (rng.choice(places), "B-LOC"), (".", "O")])
    data = write_columns(tmp_path / "ner.txt", sentences)
    result = run_script("train", "task=pos", f"model.net.checkpoint={tiny_bert}", f"data.path={data}", "model.lr=3e-3",
                        "trainer.max_epochs=2", f"paths.log_dir={tmp_path / 'logs'}", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    # the same score from the test's predictions, regrouped into sentences here: each sentence's words, in order
    from seqeval.metrics import f1_score

    saved = json.loads((run / "predictions.json").read_text())
    ends = list(itertools.accumulate(saved["words"]))
    assert ends[-1] == len(saved["label"]) == len(saved["prediction"])

    def sentences(ids: list[int]) -> list[list[str]]:
        return [[saved["labels"][i] for i in ids[start:end]] for start, end in zip([0, *ends], ends)]

    true, predicted = sentences(saved["label"]), sentences(saved["prediction"])
    assert all(len(sentence) == 6 for sentence in true)
    assert metrics["test/entity_f1"] == pytest.approx(f1_score(true, predicted), abs=1e-6)
    assert 0 < metrics["test/entity_f1"] <= 1
