"""Cleaning, batched tokenization with `head` / `head_tail` truncation, and the on-disk token cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

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
    if truncation == "head":
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    head = round(budget * 128 / 510)
    tail = budget - head
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [prefix + (x if len(x) <= budget else x[:head] + x[len(x) - tail :]) + suffix for x in ids]


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
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.int32)
    return {"ids": flat, "offsets": offsets, "labels": torch.tensor(labels, dtype=torch.int64)}


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
    """Write to a temporary file and rename: a crash never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"key": key, "splits": splits}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
