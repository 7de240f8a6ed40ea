"""src/export.py: a checkpoint becomes a Hugging Face folder that `transformers.pipeline` loads alone and that
computes what our module computes, for both tasks, on a library backbone and on our own BERT and GPT."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml
from conftest import run_script, tiny_overrides
from test_tagging import tagged_sentences, write_columns

from bertgpt.data import tokenize
from bertgpt.data.tagging import encode_sentences
from bertgpt.export import (
    base_model_of,
    hf_model,
    metrics_description,
    model_card,
    write_folder,
)
from bertgpt.pipeline import load_checkpoint
from bertgpt.tasks.classification import SequenceClassifier

SHORT = ["trainer.max_epochs=1", "data.train_size=32", "data.val_size=16", "data.test_size=16"]
REVIEWS = ["a wonderful moving film", "the plot was dull and the ending awful , a waste of a fine cast"]
SENTENCE = "the old dog liked a story ."


@pytest.fixture(scope="module", params=[(task, model) for task in ("sentiment", "pos") for model in ("bert", "bert_scratch", "gpt_scratch")],
                ids=lambda p: "-".join(p))
def exported(request, tiny_bert, tiny_gpt2, workdir, tmp_path_factory) -> SimpleNamespace:
    """A one-epoch run on a tiny backbone (library BERT, our BERT, our GPT-2), exported: its task, checkpoint, export
    folder, and the checkpoint's module, datamodule and data settings (`load_checkpoint`), to compare with."""
    task, model = request.param
    folder = tmp_path_factory.mktemp(f"{task}-{model}")
    data = [f"data.path={write_columns(folder / 'tagged.txt', tagged_sentences(64))}", "task=pos"] if task == "pos" else []
    weights = tiny_gpt2 if model.startswith("gpt") else tiny_bert
    trained = run_script("train", *tiny_overrides(weights, workdir, folder / "logs", f"model={model}", *SHORT, *data))
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (folder / "logs" / "train" / "runs").iterdir()
    ckpt, out = run / "checkpoints" / "last.ckpt", folder / "export"
    result = run_script("export", f"ckpt_path={ckpt}", f"out={out}", f"paths.log_dir={folder / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    model, datamodule_class, data_hparams = load_checkpoint(str(ckpt))
    return SimpleNamespace(task=task, ckpt=ckpt, out=out, model=model, datamodule=datamodule_class(**data_hparams), data_hparams=data_hparams)


def test_the_folder_is_a_standard_hugging_face_folder_with_labels_pad_id_and_card(exported):
    task, out, model = exported.task, exported.out, exported.model
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert list(config["id2label"].values()) == model.hparams.labels
    assert config["label2id"] == {label: i for i, label in enumerate(model.hparams.labels)}
    pad_token_id = exported.datamodule.tokenizer.pad_token_id
    assert pad_token_id is not None and config["pad_token_id"] == pad_token_id
    assert config["architectures"][0].endswith("ForSequenceClassification" if task == "sentiment" else "ForTokenClassification")
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"library_name": "transformers", "pipeline_tag": "text-classification" if task == "sentiment" else "token-classification",
                     "license": "other", "tags": front["tags"]}  # a local base folder: no base_model, license unknown
    assert "| test/acc |" in card and "python src/train.py " in card and "model=" in card
    assert all(f"`{label}`" in card for label in model.hparams.labels)


@torch.no_grad()
def test_the_pipeline_gives_our_probabilities(exported):
    out, model, datamodule, data_hparams = exported.out, exported.model, exported.datamodule, exported.data_hparams
    if exported.task == "sentiment":
        # Two reviews of different lengths in one batch: the decoder must read the last real token past the padding.
        classify = transformers.pipeline("text-classification", model=str(out), top_k=None, batch_size=2, device="cpu")
        scores = classify(REVIEWS, truncation=True, max_length=data_hparams["max_length"])  # the model card's call
        ids = tokenize.encode(datamodule.tokenizer, REVIEWS, data_hparams["max_length"])  # as src/predict.py encodes
        batch = datamodule.collator()([(torch.tensor(x), 0) for x in ids])
        ours = model(batch["input_ids"], batch["attention_mask"]).softmax(-1)
        theirs = torch.tensor([[next(s["score"] for s in row if s["label"] == label) for label in model.hparams.labels] for row in scores])
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        return
    tag = transformers.pipeline("token-classification", model=str(out), ignore_labels=[], device="cpu")
    encoded = tag.tokenizer(SENTENCE, return_tensors="pt")
    ours = model(encoded["input_ids"], encoded["attention_mask"]).softmax(-1)[0]
    tokens = tag(SENTENCE)
    assert len(tokens) >= len(SENTENCE.split())
    for token in tokens:
        assert token["score"] == pytest.approx(ours[token["index"]].max().item(), abs=1e-5)
        assert token["entity"] == model.hparams.labels[ours[token["index"]].argmax()]
    # Padded sentences as training encoded them (first sub-token of each word): the exported model's logits are ours.
    ids, _, _ = encode_sentences(datamodule.tokenizer, [SENTENCE.split(), ["the", "dog", "."]], None, data_hparams["max_length"])
    batch = datamodule.collator()([(torch.tensor(x), torch.full((len(x),), -100)) for x in ids])
    mask = batch["attention_mask"].bool()
    theirs = tag.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs[mask], model(batch["input_ids"], batch["attention_mask"])[mask], atol=1e-5, rtol=0)


@torch.no_grad()
def test_lora_adapters_are_merged_into_the_export(tiny_bert, tmp_path):
    import peft

    model = SequenceClassifier(net={"_target_": "bertgpt.models.library.build", "checkpoint": tiny_bert}, labels=["negative", "positive"])
    model.net = peft.get_peft_model(model.net, peft.LoraConfig(target_modules=["query", "value"], modules_to_save=["classifier"]))
    torch.manual_seed(0)
    for name, param in model.net.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:  # as training would: B starts at zero, the head as a copy
            param.normal_(std=0.5)
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer(REVIEWS, padding=True, return_tensors="pt")
    unmerged = model(batch["input_ids"], batch["attention_mask"])
    net = hf_model(model, tokenizer.pad_token_id)
    assert isinstance(model.net, peft.PeftModel)  # the module keeps its adapters
    assert not any("lora" in name for name in net.state_dict())
    write_folder(net, tokenizer, "card", tmp_path / "export")
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    merged = loaded(**batch).logits
    with model.net.disable_adapter():
        assert (unmerged - model(batch["input_ids"], batch["attention_mask"])).abs().max() > 1e-3  # the adapters and the head do change them
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("exported", [("sentiment", "bert")], indirect=True, ids=["sentiment-bert"])
def test_an_existing_folder_is_replaced_only_with_overwrite(exported, tmp_path):
    ckpt, out = exported.ckpt, exported.out
    target = tmp_path / "hf"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    refused = run_script("export", f"ckpt_path={ckpt}", f"out={target}", f"paths.log_dir={tmp_path}")
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "overwrite=true" in refused.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    replaced = run_script("export", f"ckpt_path={ckpt}", f"out={target}", "overwrite=true", f"paths.log_dir={tmp_path}")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in out.iterdir())
    assert not list(tmp_path.glob(".hf-*"))  # no temporary folder left beside it


@pytest.mark.parametrize("args, message", [
    (["out=DIR"], "error: ckpt_path is not set"),
    (["ckpt_path=nowhere.ckpt", "out=DIR"], "error: ckpt_path=nowhere.ckpt: no such file"),
    (["ckpt_path=nowhere.ckpt"], "error: out is not set. Pass out=DIR"),
])
def test_missing_arguments_are_one_clear_error(args, message, tmp_path):
    result = run_script("export", *(a.replace("DIR", str(tmp_path / "out")) for a in args), f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_card_names_known_base_models_and_their_licenses(tmp_path):
    assert base_model_of("all-minilm-l6-v2") == ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert base_model_of("smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model_of("gpt2") == ("openai-community/gpt2", "mit")
    assert base_model_of("google-bert/bert-base-uncased") == ("google-bert/bert-base-uncased", "apache-2.0")
    assert base_model_of("someone/unknown-model") == ("someone/unknown-model", None)
    assert base_model_of(str(tmp_path)) == (None, None)  # a local folder is no hub id
    assert metrics_description(tmp_path, tmp_path / "checkpoints" / "last.ckpt").startswith("Not evaluated")


def test_the_card_of_a_bundled_base_model_has_its_front_matter(tiny_bert, tmp_path):
    model = SequenceClassifier(net={"_target_": "bertgpt.models.library.build", "checkpoint": tiny_bert}, labels=["negative", "positive"])
    model.hparams.net["checkpoint"] = "all-minilm-l6-v2"  # what the card reads; the weights stay tiny
    card = model_card(model, {"source": "auto", "path": None, "max_length": 128, "truncation": "head"}, tmp_path / "checkpoints" / "x.ckpt")
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "25,000 IMDB reviews" in card and "Not evaluated" in card and "train all, val all, test all" in card
    model.hparams.net["pretrained"] = False  # only the architecture and tokenizer are the base model's
    front = yaml.safe_load(model_card(model, {}, tmp_path / "x.ckpt").split("---")[1])
    assert "base_model" not in front and front["license"] == "apache-2.0"
