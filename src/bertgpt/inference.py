"""Prediction from a checkpoint of `src/train.py` without Lightning: what `src/predict.py` runs.

A one-sentence predict is mostly start-up, and importing Lightning (with the metrics, loggers and callbacks of
training) was a large share of it (measured: README.md, "Export to Hugging Face"). Here the checkpoint is read
as plain tensors, the backbone `net` rebuilt from the Hydra config its task module saved and given the trained
weights, and each task's lines are printed as its module printed them. The tasks (tasks/) read their logits with
`net_logits` from here; nothing here imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from bertgpt.data import tokenize
from bertgpt.data.collate import PadCollator
from bertgpt.data.read import read_lines
from bertgpt.errors import UserError
from bertgpt.training.safe_load import is_sharded_checkpoint, load_checkpoint_safely


def net_logits(net: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone's logits: ours return them, every Hugging Face `*For*Classification` returns `.logits`."""
    out = net(input_ids=input_ids, attention_mask=attention_mask)
    return out if isinstance(out, torch.Tensor) else out.logits


def read_checkpoint(path: str | None) -> dict:
    """What a checkpoint written by `train` holds (model state and hyperparameters, task, data settings), checked."""
    if not path:
        raise UserError("ckpt_path is not set. Pass ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if is_sharded_checkpoint(file):
        raise UserError(f"ckpt_path={path}: a folder of shards (save_distributed_checkpoint=true), which only a sharded training run reads. Evaluate a single-file checkpoint: train with trainer.strategy.save_distributed_checkpoint=false.")
    if not file.is_file():
        raise UserError(f"ckpt_path={path}: no such file. Checkpoints are under logs/train/runs/<run>/checkpoints/.")
    blob = load_checkpoint_safely(file, f"ckpt_path={path}")
    if not isinstance(blob, dict) or "state_dict" not in blob or "datamodule_hyper_parameters" not in blob or "task" not in blob:
        raise UserError(f"ckpt_path={path}: not a checkpoint written by src/train.py (no model state, task or data settings).")
    return blob


def project_name(name, path: str) -> str:
    """A class or builder a checkpoint names, if it is this package's: a checkpoint must not pick code to run."""
    if not (isinstance(name, str) and name.startswith("bertgpt.")):
        raise UserError(f"ckpt_path={path}: names the class {name!r}, which is not one of this project's tasks.")
    return name


def build_net(config: dict, head: str, num_labels: int, path: str) -> torch.nn.Module:
    """The backbone a task module builds from its `net` config (a flat Hydra `_target_` and its arguments, as
    `hydra.utils.instantiate` calls it), with that head and label count."""
    options = dict(config)
    module, _, builder = project_name(options.pop("_target_", None), path).rpartition(".")
    return getattr(importlib.import_module(module), builder)(**options, head=head, num_labels=num_labels)


def collator(tokenizer, data: dict) -> PadCollator:
    """Batches padded as the datamodule padded them in training and testing."""
    return PadCollator.for_tokenizer(tokenizer, data["pad_to_multiple_of"])


def sentiment_lines(net, labels: list[str], tokenizer, data: dict, texts: list[str], batch_size: int) -> list[str]:
    """`label<TAB>probability<TAB>text` for each text, tokenized as the datamodule tokenized training."""
    ids = tokenize.encode(tokenizer, texts, data["max_length"], data["truncation"])
    collate, rows = collator(tokenizer, data), []
    for start in range(0, len(ids), batch_size):
        batch = collate([(torch.tensor(x), 0) for x in ids[start : start + batch_size]])
        best = net_logits(net, batch["input_ids"], batch["attention_mask"]).float().softmax(-1).max(-1)
        rows += [(labels[i], p) for i, p in zip(best.indices.tolist(), best.values.tolist())]
    return [f"{label}\t{p:.4f}\t{text}" for (label, p), text in zip(rows, texts)]


def tag_lines(net, labels: list[str], tokenizer, data: dict, texts: list[str], batch_size: int) -> list[str]:
    """`word/TAG word/TAG ...` for each text, split into words at white space. A word is tagged at its first
    subword; one cut off by max_length gets the tag "-"."""
    from bertgpt.data.subwords import encode_sentences

    sentences = [text.split() for text in texts]
    ids, _, word_index = encode_sentences(tokenizer, sentences, None, data["max_length"], data["label_all_subwords"])
    collate, lines = collator(tokenizer, data), []
    for start in range(0, len(ids), batch_size):
        chunk = slice(start, start + batch_size)
        batch = collate([(torch.tensor(x), 0) for x in ids[chunk]])
        tags = net_logits(net, batch["input_ids"], batch["attention_mask"]).argmax(-1).tolist()  # (B, T)
        for sentence, positions, row in zip(sentences[chunk], word_index[chunk], tags):
            # word_index[s][t]: the word whose first subword is token t (-1 elsewhere); left padding shifts the row
            offset = len(row) - len(positions) if tokenizer.padding_side == "left" else 0
            chosen = {w: row[offset + t] for t, w in enumerate(positions) if w >= 0}
            lines.append(" ".join(f"{word}/{labels[chosen[i]] if i in chosen else '-'}" for i, word in enumerate(sentence)))
    return lines


def snapshot(net: torch.nn.Module, tokenizer) -> dict:
    """What a checkpoint carries so that predict starts without importing transformers: the data pipeline's fast
    tokenizer (`tokenize.snapshot`) and, for a library backbone, its config's fields (`convert.config_fields`)."""
    found = {}
    if getattr(tokenizer, "is_fast", False):
        found["tokenizer"] = tokenize.snapshot(tokenizer)
    config = getattr(net, "config", None)
    if hasattr(config, "to_json_string"):  # a Hugging Face config
        from bertgpt.models.convert import config_fields

        found["config"] = config_fields(config)
    return found


def sentiment_tokenizer(name: str, stored: dict | None = None):
    """The tokenizer the checkpoint stored, rebuilt without transformers; else the checkpoint's own, loaded by name."""
    if stored:
        return tokenize.SnapshotTokenizer(**stored)
    from bertgpt.models.library import load_tokenizer

    return load_tokenizer(name)


def tagging_tokenizer(name: str, stored: dict | None = None):
    """The library's tokenizer, whatever the checkpoint stored: aligning tags to words takes its word ids."""
    from bertgpt.data.subwords import load_tagging_tokenizer

    return load_tagging_tokenizer(name)


@dataclass(frozen=True)
class Task:
    head: str  # the backbone head its module builds
    load_tokenizer: Callable[[str, dict | None], object]  # as its datamodule loads it (name, the checkpoint's snapshot)
    lines: Callable[..., list[str]]


# Each task module of tasks/, by the name its checkpoints carry (tests/test_predict.py checks these names).
TASKS = {
    "bertgpt.tasks.classification.SequenceClassifier": Task("sequence", sentiment_tokenizer, sentiment_lines),
    "bertgpt.tasks.tagging.TokenClassifier": Task("token", tagging_tokenizer, tag_lines),
}


@dataclass
class Predictor:
    """A checkpoint's trained backbone in eval mode, with its labels, tokenizer and data settings."""

    task: Task
    net: torch.nn.Module
    labels: list[str]
    tokenizer: object
    data: dict
    precision: str = "32-true"  # or bf16-mixed: the forward under bf16 autocast, as Lightning runs train and eval

    @torch.no_grad()
    def lines(self, texts: list[str], batch_size: int) -> list[str]:
        device = next(self.net.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"):
            return self.task.lines(self.net, self.labels, self.tokenizer, self.data, texts, batch_size)


# A library model of a family ours implement (BERT, GPT-2, Llama) is run as ours, with its weights: building
# the library's class imports transformers' model code, most of a one-sentence predict's start-up (docs/performance.md).
LIBRARY_BUILD = "bertgpt.models.library.build"


def load_predictor(path: str | None) -> Predictor:
    """The predictor of a checkpoint written by `train`, for task=sentiment or task=pos."""
    blob = read_checkpoint(path)
    name = project_name(blob["task"].get("module"), path)
    if name not in TASKS:
        raise UserError(f"ckpt_path={path}: a {name.rsplit('.', 1)[-1]} checkpoint; predict takes those of task=sentiment and task=pos.")
    task, hparams, data = TASKS[name], blob["hyper_parameters"], dict(blob["datamodule_hyper_parameters"])
    labels = [str(label) for label in hparams["labels"]]
    stored = blob.get("inference") or {}  # absent from checkpoints written before predict could start without transformers
    tokenizer = task.load_tokenizer(data["tokenizer"], stored.get("tokenizer"))
    weights = {k.removeprefix("net."): v for k, v in blob["state_dict"].items() if k.startswith("net.")}
    lora = hparams.get("lora") or {}
    net = None
    if hparams["net"].get("_target_") == LIBRARY_BUILD and lora.get("r") is None:
        from bertgpt.models.convert import library_as_ours

        net = library_as_ours(hparams["net"], task.head, len(labels), weights, tokenizer.pad_token_id, stored.get("config"))
    if net is None:
        net = build_net(hparams["net"], task.head, len(labels), path)
        if lora.get("r") is not None:  # the adapters are in the state dict as the module had them; merged once loaded
            from bertgpt.models.lora import add_lora, merge_lora

            net = add_lora(net, **lora)
        net.load_state_dict(weights)
        if lora.get("r") is not None:
            net = merge_lora(net)
    return Predictor(task, net.eval(), labels, tokenizer, data)


def check_max_length(max_length: int, tokenizer) -> int:
    """`max_length=...` if the model takes that many tokens (the datamodule's rule for data.max_length)."""
    limit = tokenize.model_limit(tokenizer)
    if max_length < 8 or (limit and max_length > limit):
        raise UserError(f"max_length={max_length}: use 8 to {limit or 'the model limit'} tokens, or null for the checkpoint's.")
    return max_length


PRECISIONS = ("bf16-mixed", "32-true")


def predict(cfg: DictConfig) -> list[str]:
    """One line per `text=...` and per line of `file=...`: a review's label and probability, or a sentence's word/TAG pairs."""
    texts = [cfg.text] if cfg.get("text") is not None else []
    if cfg.get("file"):
        texts += read_lines(Path(cfg.file).expanduser())
    texts = [str(t) for t in texts if str(t).strip()]
    if not texts:
        raise UserError('nothing to predict: pass text="a review" or file=path/to/lines.txt (one review or sentence per line, not empty).')
    precision = str(cfg.get("precision") or "32-true")
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision}: choose {' or '.join(PRECISIONS)} (bf16 autocast or fp32).")
    if int(cfg.batch_size) < 1:
        raise UserError(f"batch_size={cfg.batch_size}: texts per forward pass, a positive number (default 64).")
    predictor = load_predictor(cfg.ckpt_path)
    predictor.precision = precision
    if cfg.get("max_length") is not None:
        predictor.data["max_length"] = check_max_length(int(cfg.max_length), predictor.tokenizer)
    lines = predictor.lines(texts, cfg.batch_size)
    for line in lines:
        print(line)
    return lines
