"""Cleaning, batched tokenization with `head` / `head_tail` truncation, and the on-disk token cache."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from bertgpt.files import atomic_file
from bertgpt.models.hub import cache_root

BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
TRUNCATIONS = ("head", "head_tail")
CACHE_FORMAT = 1  # bump when the cached layout changes: old files then no longer match their key


def clean(text: str) -> str:
    """Drop IMDB's `<br />` markup and fold runs of white space."""
    return " ".join(BREAK.sub(" ", text).split())


def encode(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> list[list[int]]:
    """Token ids with the model's special tokens, at most `max_length` long, in one batched call.

    `head` keeps the first tokens. `head_tail` keeps the first quarter and the last three quarters of the
    budget (Sun et al. 2019 keep 128 + 382 of 510): a review's verdict is often in its last sentences.
    """
    texts = [clean(t) for t in texts]
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if truncation == "head":
        return [prefix + x[:budget] + suffix for x in head_ids(tokenizer, texts, budget)]
    head = round(budget * 128 / 510)
    tail = budget - head
    ids = batch_ids(tokenizer, texts, add_special_tokens=False)
    return [prefix + (x if len(x) <= budget else x[:head] + x[len(x) - tail :]) + suffix for x in ids]


def head_ids(tokenizer, texts: list[str], budget: int, chars_per_token: int = 6, margin: int = 16) -> list[list[int]]:
    """At least the first `budget` tokens of each text (all of them for a shorter one), tokenizing only a head.

    A review averages ~300 tokens and the default keeps 126, so each text is first cut at a space after
    `chars_per_token * budget` characters: the words before the cut tokenize as they do in the whole text.
    A text whose head gives fewer than `budget + margin` tokens (the margin keeps clear of the cut word) is
    tokenized whole. Equal to tokenizing everything and truncating (tests/test_data.py), and faster (measured:
    docs/performance.md, "Tokenization").
    """
    limit = chars_per_token * budget
    heads = [t if len(t) <= limit else t[: t.find(" ", limit) % (len(t) + 1)] for t in texts]
    ids = batch_ids(tokenizer, heads, add_special_tokens=False)
    redo = [i for i, (x, head, text) in enumerate(zip(ids, heads, texts)) if len(head) < len(text) and len(x) < budget + margin]
    for i, x in zip(redo, batch_ids(tokenizer, [texts[i] for i in redo], add_special_tokens=False) if redo else []):
        ids[i] = x
    return ids


def batch_ids(tokenizer, texts: list[str], max_length: int | None = None, add_special_tokens: bool = True) -> list[list[int]]:
    """`tokenizer(texts, truncation=..., max_length=...)["input_ids"]` in one call to the Rust backend.

    A fast tokenizer's `encode_batch_fast` skips the character offsets that the Hugging Face call computes and
    we never use, so it is faster (bench/bench_tokenize.py; docs/performance.md, "Tokenization"). It runs on a
    copy of the backend, because truncation is a setting stored on it.
    """
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer(texts, truncation=max_length is not None, max_length=max_length, add_special_tokens=add_special_tokens)["input_ids"]
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length)
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]


def snapshot(tokenizer) -> dict:
    """What predicting with a fast tokenizer needs of it, as plain values a checkpoint can carry: its Rust backend
    (vocabulary, normalizer, special-token template), pad id and side, and length limit."""
    return {"backend": tokenizer.backend_tokenizer.to_str(), "pad_token_id": tokenizer.pad_token_id,
            "padding_side": tokenizer.padding_side, "model_max_length": tokenizer.model_max_length}


class SnapshotTokenizer:
    """A fast tokenizer rebuilt from its `snapshot` without importing transformers (a large part of a one-sentence
    predict's start-up: docs/performance.md), with the part of its interface that `encode`, `model_limit` and the
    collators use. It gives the ids the Hugging Face tokenizer gives: both run the same backend
    (tests/test_predict.py compares them on every family)."""

    is_fast = True

    def __init__(self, backend: str, pad_token_id: int, padding_side: str, model_max_length: int):
        self.backend_tokenizer = Tokenizer.from_str(backend)
        self.backend_tokenizer.no_truncation()  # as a Hugging Face call without truncation=... or padding=...
        self.backend_tokenizer.no_padding()
        self.pad_token_id, self.padding_side, self.model_max_length = pad_token_id, padding_side, model_max_length

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def model_limit(tokenizer) -> int | None:
    """The most tokens the tokenizer's model takes; None when its config does not say (transformers then reports
    a huge sentinel, int(1e30))."""
    limit = tokenizer.model_max_length
    return limit if limit < 1_000_000 else None


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] / [SEP] for BERT, none for GPT-2)."""
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
    return full[:start], full[start + len(bare) :]


def tokenizer_fingerprint(tokenizer) -> str:
    """What makes two tokenizers give the same ids: the full serialized fast tokenizer and its special tokens.

    Without its truncation / padding settings: every call sets those, so after the first `encode` the key would
    change, and each first run would tokenize twice (prepare_data, then setup) and cache two copies.
    """
    if tokenizer.is_fast:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        backend = json.dumps(state, sort_keys=True)
    else:
        backend = repr(tokenizer.get_vocab())
    return hashlib.sha256(f"{type(tokenizer).__name__}|{backend}|{tokenizer.pad_token_id}".encode()).hexdigest()


def cache_key(splits: dict[str, tuple[list[str], list[int]]], tokenizer, max_length: int, truncation: str) -> str:
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{truncation}".encode())
    for name in sorted(splits):
        texts, labels = splits[name]
        h.update(f"|{name}|{len(texts)}|".encode())
        h.update(bytes(labels))
        for text in texts:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()


def pack(ids: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
    """Ragged token ids as one flat tensor plus offsets: compact on disk, fast to slice."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    offsets = torch.zeros(len(ids) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    flat = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1])))  # faster than a list comprehension (docs/performance.md, "Tokenization")
    return {"ids": flat, "offsets": offsets, "labels": torch.tensor(labels, dtype=torch.int64)}


def cache_path(key: str, cache_dir: str | Path | None = None) -> Path:
    """The file a key's tokenized splits are cached in, under `hub.cache_root(cache_dir)`."""
    return cache_root(cache_dir) / "tokenized" / f"{key[:24]}.pt"


def load_cache(path: Path, key: str) -> dict | None:
    """The cached splits if the file exists, reads, and was written for exactly this key; else None."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # truncated or corrupt: treated as absent and rebuilt
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        return None
    return blob["splits"]


def save_cache(path: Path, key: str, splits: dict) -> None:
    """Written whole or not at all (`files.atomic_file`): a crash never leaves a half-written cache behind."""
    with atomic_file(path) as tmp:
        torch.save({"key": key, "splits": splits}, tmp)
