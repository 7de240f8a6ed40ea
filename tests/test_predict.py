"""src/predict.py runs without Lightning (bertgpt.inference) and prints what the trained LightningModule predicts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import only_run, run_script, tiny_overrides
from omegaconf import OmegaConf

from bertgpt import ROOT
from bertgpt.data import tokenize
from bertgpt.errors import UserError
from bertgpt.inference import TASKS, load_predictor, predict
from bertgpt.pipeline import load_checkpoint
from bertgpt.tasks.classification import SequenceClassifier, qualified_name
from bertgpt.tasks.tagging import TokenClassifier

TEXTS = ["Great fun, really: I didn't expect it \\o/", "the plot was dull and the ending awful", "a superb , moving film <br /> loved it"]


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, workdir, tmp_path_factory) -> str:
    logs = tmp_path_factory.mktemp("predict-logs")
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, "trainer.max_epochs=1", "test=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    return str(only_run(logs) / "checkpoints" / "last.ckpt")


def module_lines(ckpt: str, texts: list[str], max_length: int | None = None) -> list[str]:
    """What the LightningModule eval tests with predicts, batched by its datamodule: the lines predict must print."""
    model, datamodule_class, data = load_checkpoint(ckpt)
    datamodule = datamodule_class(**data)
    ids = tokenize.encode(datamodule.tokenizer, texts, max_length or data["max_length"], data["truncation"])
    batch = datamodule.collator()([(torch.tensor(x), 0) for x in ids])
    with torch.no_grad():
        best = model(batch["input_ids"], batch["attention_mask"]).float().softmax(-1).max(-1)
    return [f"{model.hparams.labels[i]}\t{p:.4f}\t{text}" for i, p, text in zip(best.indices.tolist(), best.values.tolist(), texts)]


def test_predict_imports_no_lightning_and_prints_what_the_module_predicts(checkpoint, tmp_path):
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("\n".join(TEXTS[1:]) + "\n")
    command = ["src/predict.py", f"ckpt_path={checkpoint}", f"text={TEXTS[0]}", f"file={reviews}", f"paths.log_dir={tmp_path / 'logs'}",
               "precision=32-true"]
    done = subprocess.run([sys.executable, "-X", "importtime", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "bertgpt.inference" in imported  # the list is real
    assert not {name for name in imported if name.split(".")[0] in ("lightning", "torchmetrics")}
    assert "bertgpt.pipeline" not in imported and not any(name.startswith("bertgpt.tasks") for name in imported)
    # the library BERT runs as ours, from the tokenizer and config the checkpoint stored: transformers stays unloaded
    assert not {name for name in imported if name.split(".")[0] == "transformers"}
    assert not (tmp_path / "logs").exists()  # no run folder: predict writes nothing
    assert done.stdout.splitlines() == module_lines(checkpoint, TEXTS)


def test_batches_and_max_length_change_nothing_but_the_tokens(checkpoint, capsys):
    config = {"ckpt_path": checkpoint, "text": None, "file": None, "batch_size": 1, "max_length": None, "precision": "32-true"}
    assert load_predictor(checkpoint).lines(TEXTS, batch_size=2) == module_lines(checkpoint, TEXTS)
    short = predict(OmegaConf.create({**config, "text": TEXTS[0], "max_length": 8}))
    assert short == module_lines(checkpoint, TEXTS[:1], max_length=8) != module_lines(checkpoint, TEXTS[:1])
    assert capsys.readouterr().out.splitlines() == short


def test_a_checkpoint_from_before_the_snapshot_predicts_the_same(checkpoint, tmp_path):
    blob = torch.load(checkpoint, weights_only=True)
    assert set(blob["inference"]) == {"tokenizer", "config"}
    del blob["inference"]  # as checkpoints written before it: the tokenizer and config are loaded by name
    torch.save(blob, tmp_path / "old.ckpt")
    predictor = load_predictor(str(tmp_path / "old.ckpt"))
    assert type(predictor.tokenizer).__name__ != "SnapshotTokenizer"
    assert predictor.lines(TEXTS, batch_size=2) == load_predictor(checkpoint).lines(TEXTS, batch_size=2) == module_lines(checkpoint, TEXTS)


LONG = [TEXTS[1] + " " + " ".join(f"then word{i} and more" for i in range(60)), *TEXTS]  # past the budget: both truncations cut


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2", "tiny_chat", pytest.param("all-minilm-l6-v2", marks=pytest.mark.slow),
                                    pytest.param("smollm2-135m", marks=pytest.mark.slow)])
def test_the_stored_tokenizer_gives_the_librarys_ids(family, request):
    from bertgpt.models import library

    name = request.getfixturevalue(family) if family.startswith("tiny") else family
    theirs = library.load_tokenizer(name)
    ours = tokenize.SnapshotTokenizer(**tokenize.snapshot(theirs))
    assert (ours.pad_token_id, ours.padding_side, tokenize.model_limit(ours)) == (theirs.pad_token_id, theirs.padding_side, tokenize.model_limit(theirs))
    assert tokenize.special_tokens(ours) == tokenize.special_tokens(theirs)
    for truncation in tokenize.TRUNCATIONS:
        expected = tokenize.encode(theirs, LONG, 48, truncation)
        assert tokenize.encode(ours, LONG, 48, truncation) == expected and len(expected[0]) == 48


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2", "tiny_chat"])
@pytest.mark.parametrize("head", ["sequence", "token"])
@pytest.mark.parametrize("stored", [False, True], ids=["config-by-name", "stored-config"])
def test_a_library_model_runs_as_ours_with_the_same_logits(family, head, stored, request):
    from bertgpt.data.collate import PadCollator
    from bertgpt.models import library
    from bertgpt.models.convert import config_fields, library_as_ours

    net_config = {"checkpoint": request.getfixturevalue(family), "attn_dropout": 0.0, "attention": "auto"}
    torch.manual_seed(1)
    theirs = library.build(**net_config, head=head, num_labels=3).eval()
    tokenizer = library.load_tokenizer(net_config["checkpoint"])
    fields = config_fields(theirs.config) if stored else None  # the trained backbone's config, as a checkpoint stores it
    ours = library_as_ours({"_target_": "bertgpt.models.library.build", **net_config}, head, 3, theirs.state_dict(), tokenizer.pad_token_id, fields)
    assert type(ours).__module__.startswith("bertgpt.models.") and not ours.fresh_heads
    ids = tokenize.encode(tokenizer, TEXTS, 32)
    batch = PadCollator.for_tokenizer(tokenizer, 1)([(torch.tensor(x), 0) for x in ids])  # three lengths: padding is read
    assert batch["attention_mask"].float().mean() < 1
    with torch.no_grad():
        expected = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = ours.eval()(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool() if head == "token" else slice(None)  # a pad position's tag is never read
    assert got.shape == expected.shape and torch.allclose(got[real], expected[real], atol=1e-5), (got - expected).abs().max()


def test_the_task_table_names_the_task_modules():
    assert set(TASKS) == {qualified_name(SequenceClassifier), qualified_name(TokenClassifier)}
    assert [TASKS[qualified_name(cls)].head for cls in (SequenceClassifier, TokenClassifier)] == [SequenceClassifier.head, TokenClassifier.head]


def test_a_checkpoint_that_names_foreign_code_is_refused(checkpoint, tmp_path):
    blob = torch.load(checkpoint, weights_only=True)
    blob["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(blob, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match=r"names the class 'os.system', which is not one of this project's"):
        load_predictor(str(tmp_path / "foreign.ckpt"))


def test_bf16_autocast_predicts_the_same_labels_with_close_probabilities(checkpoint):
    predictor = load_predictor(checkpoint)
    fp32 = [line.split("\t") for line in predictor.lines(TEXTS, batch_size=2)]
    predictor.precision = "bf16-mixed"
    bf16 = [line.split("\t") for line in predictor.lines(TEXTS, batch_size=2)]
    assert [row[0] for row in bf16] == [row[0] for row in fp32]
    assert max(abs(float(a[1]) - float(b[1])) for a, b in zip(bf16, fp32)) < 0.02


@pytest.mark.parametrize("override, message", [("fooo=1", "Could not override 'fooo'"), ("max_length=4", "max_length=4: use 8 to 512 tokens"),
                                               ("precision=16-mixed", "precision=16-mixed: choose bf16-mixed or 32-true")])
def test_a_bad_override_exits_2_with_one_line(checkpoint, tmp_path, override, message):
    result = run_script("predict", f"ckpt_path={checkpoint}", "text=hello", override, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_hydra_flag_runs_the_full_hydra_main():
    result = run_script("predict", "--cfg", "job", "ckpt_path=x.ckpt", "text=a, b: c")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "text: 'a, b: c'" in result.stdout and "max_length: null" in result.stdout
