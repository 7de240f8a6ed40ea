"""One LightningDataModule for every review source: read, clean, split 9:1, tokenize (cached), pad per batch."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sentiment.data import tokenize
from sentiment.data.sources import Split, load_corpus
from sentiment.errors import UserError
from sentiment.models.hf import load_tokenizer
from sentiment.models.hub import default_cache_dir

log = logging.getLogger(__name__)


class TokenizedSplit(Dataset):
    """Token ids stored flat with offsets (see `tokenize.pack`); item i is one unpadded review."""

    def __init__(self, packed: dict[str, torch.Tensor]):
        self.ids, self.offsets, self.labels = packed["ids"], packed["offsets"], packed["labels"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ids[self.offsets[i] : self.offsets[i + 1]], int(self.labels[i])

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


class ResumableSampler(DistributedSampler):
    """DistributedSampler's shuffle, a function of (seed, epoch) alone, that can start part-way into an epoch.

    Lightning restarts a resumed epoch's iterator from its first batch, and a plain shuffle draws a new order
    from the global RNG. Here the order is fixed by the seed and the epoch (Lightning calls `set_epoch`), and
    `skip` drops the samples this rank already trained on before the checkpoint: the resumed run sees exactly
    the batches the uninterrupted one would have. With one process it is a plain seeded shuffle.

    With `batch_size` and `lengths`, consecutive batches are length-grouped (see `group_by_length`).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, skip: int = 0,
                 batch_size: int | None = None, lengths: torch.Tensor | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip, self.batch_size, self.lengths = skip, batch_size, lengths

    def __iter__(self):
        if self.lengths is not None and self.batch_size:
            indices = self.grouped_share()
        else:
            indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the epoch in progress at the checkpoint is partial
        return iter(indices[skip:])

    def grouped_share(self) -> list[int]:
        """This rank's part of length-grouped global batches (batch_size x replicas reviews each).

        Grouping the whole shuffled epoch and then cutting each global batch across the ranks keeps step i's
        reviews, over all ranks, the batch one process would train on at batch_size x replicas.
        """
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # DistributedSampler's shuffle ...
        order += (order * math.ceil(self.total_size / len(order)))[: self.total_size - len(order)]  # ... and padding
        span = self.batch_size * self.num_replicas
        grouped = group_by_length(order, self.lengths.tolist(), span, torch.Generator().manual_seed(self.seed + self.epoch + 1))
        share = []
        for start in range(0, len(grouped), span):
            chunk = grouped[start : start + span]
            per = len(chunk) // self.num_replicas  # the last chunk is partial; total_size divides evenly
            share += chunk[self.rank * per : (self.rank + 1) * per]
        return share


def group_by_length(indices: list[int], lengths: list[int], batch_size: int, generator: torch.Generator, window: int = 64) -> list[int]:
    """`indices` reordered so that each run of `batch_size` holds reviews of similar length: less padding.

    Each window of `window` batches (already shuffled) is sorted by length and cut into batches; the full
    batches are then shuffled, so an epoch still mixes lengths and classes. The one partial batch stays last:
    the loader cuts batches at multiples of batch_size, and a resumed epoch skips whole batches.
    """
    span = batch_size * window
    grouped = []
    for start in range(0, len(indices), span):
        chunk = indices[start : start + span]
        grouped += sorted(chunk, key=lambda i: -lengths[i])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in [batches[j] for j in order] + tail for i in b]


class PadCollator:
    """Dynamic padding: each batch is padded to its own longest review, not to max_length.

    `multiple` rounds that width up (64: at most 8 widths at 512 tokens). A GPU pays for every new width: cuDNN
    attention plans and torch.compile graphs are built per shape, and a plan costs more than the step.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", multiple: int = 1):
        self.pad_token_id, self.padding_side, self.multiple = pad_token_id, padding_side, multiple

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        width = -(-max(len(ids) for ids, _ in items) // self.multiple) * self.multiple
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = ids
            attention_mask[row, span] = 1
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class IMDBDataModule(L.LightningDataModule):
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
        super().__init__()
        if truncation not in tokenize.TRUNCATIONS:
            raise UserError(f"data.truncation={truncation}: choose one of {', '.join(tokenize.TRUNCATIONS)}.")
        if max_length < 8:
            raise UserError(f"data.max_length={max_length} is below 8: too short to hold a review. Use 128 (the default) or more.")
        if pad_to_multiple_of < 1:
            raise UserError(f"data.pad_to_multiple_of={pad_to_multiple_of} must be 1 (pad to the longest review) or more.")
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (the classic recipe uses 0.1).")
        self.save_hyperparameters(logger=False)
        self.splits: dict[str, TokenizedSplit] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
            limit = self._tokenizer.model_max_length
            if limit < 1_000_000 and self.hparams.max_length > limit:
                raise UserError(f"data.max_length={self.hparams.max_length} is above this model's limit of {limit} tokens. Use at most {limit}.")
        return self._tokenizer

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

    def cache_path(self, key: str) -> Path:
        root = Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir()
        return root / "tokenized" / f"{key[:24]}.pt"

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

    def prepare_data(self) -> None:
        self.encoded_splits()  # rank 0 only: tokenizes once and fills the cache for every process

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {name: TokenizedSplit(packed) for name, packed in self.encoded_splits().items()}

    @staticmethod
    def collator_for(tokenizer, multiple: int = 1) -> PadCollator:
        return PadCollator(tokenizer.pad_token_id, tokenizer.padding_side, multiple)

    def collator(self) -> PadCollator:
        return self.collator_for(self.tokenizer, self.hparams.pad_to_multiple_of)

    def _sampler(self, split: str):
        """Train: the resumable seeded shuffle. Eval under DDP: each review on exactly one rank, none repeated
        (Lightning's DistributedSampler would repeat reviews to even out the ranks, skewing val/acc)."""
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        dataset = self.splits[split]
        if split != "train":
            if replicas > 1:
                return UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
            # the order of evaluation changes no metric; sorted by length, each batch pads least
            return sorted(range(len(dataset)), key=dataset.lengths.tolist().__getitem__) if self.hparams.group_by_length else None
        sampler = ResumableSampler(
            dataset, replicas, rank, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),  # set by seed_everything
            batch_size=self.hparams.batch_size, lengths=dataset.lengths if self.hparams.group_by_length else None,
        )
        batches_per_epoch = math.ceil(sampler.num_samples / self.hparams.batch_size)
        sampler.skip = self.batches_done % batches_per_epoch * self.hparams.batch_size
        self.batches_done = 0  # only the first loader after a restore starts mid-epoch
        return sampler

    # Resuming: the training batches a checkpoint has seen, to start the loader where it stopped. Lightning restores
    # this before it first builds the loader (which configure_optimizers does, to count the steps).
    batches_done = 0

    def state_dict(self) -> dict:
        return {"batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.total.processed if self.trainer else 0}

    def load_state_dict(self, state_dict: dict) -> None:
        self.batches_done = state_dict.get("batches_done", 0)

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.splits[split],
            batch_size=hp.batch_size if split == "train" else hp.eval_batch_size,
            sampler=self._sampler(split),
            # its own generator: starting an iterator would otherwise draw from the global RNG, dropout's
            generator=torch.Generator().manual_seed(0),
            collate_fn=self.collator(),
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
