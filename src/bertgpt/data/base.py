"""What every task's datamodule shares: token ids stored flat, the resumable length-grouped sampler, padding per
batch, the token cache and the loaders. A task's datamodule (reviews.py, tagging.py) reads its data, tokenizes it
with its labels, and inherits the rest from `TokenDataModule`."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from bertgpt.data.collate import IGNORE, PadCollator  # noqa: F401  (IGNORE: where the tests import it)
from bertgpt.data.tokenize import model_limit
from bertgpt.errors import UserError
from bertgpt.models.library import load_tokenizer

log = logging.getLogger(__name__)

class TokenizedSplit(Dataset):
    """Token ids stored flat with offsets (see `tokenize.pack`); item i is one unpadded example.

    Its label is one class (`labels`, a review's sentiment) or one label per token (`token_labels`, flat beside
    the ids under the same offsets: a sentence's tags, -100 where a token carries none).
    """

    def __init__(self, packed: dict[str, torch.Tensor]):
        self.ids, self.offsets = packed["ids"], packed["offsets"]
        self.labels, self.token_labels = packed.get("labels"), packed.get("token_labels")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        span = slice(self.offsets[i], self.offsets[i + 1])
        return self.ids[span], (self.token_labels[span].long() if self.token_labels is not None else int(self.labels[i]))

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


def tested_on(n: int, total: int, item: str, split: str | None, where: str) -> str:
    """What a test runs on, as `Testing on ...` says it: `all 1,234 reviews of FILE` (split None: every row), `the
    2,500-review held-out split of the training data (FILE)`, led by `100 of` when a size limit takes fewer."""
    limited = f"{n:,} of " if n < total else ""
    if split is None:
        return f"{limited}{'the' if limited else 'all'} {total:,} {item}s of {where}"
    return f"{limited}the {total:,}-{item} {split} of {where}"


class TokenDataModule(L.LightningDataModule):
    """The loaders, samplers, padding, tokenizer and cache of every task's datamodule.

    A subclass saves its hyperparameters (which must include tokenizer, max_length, batch_size,
    eval_batch_size, group_by_length, pad_to_multiple_of, num_workers, pin_memory and cache_dir), and defines
    `encoded_splits()`: {"train" | "val" | "test": packed tensors (see `TokenizedSplit`)} and `labels`, the
    names of its classes or tags, which the task's LightningModule is built with.
    """

    labels: list[str]
    test_origin = "the test split"  # what the test split holds, in words (see `tested_on`): set when the data is read

    def __init__(self, max_length: int, pad_to_multiple_of: int, item: str, batch_sizes: dict[str, int], limits: dict[str, int | None]):
        """Checks the options every task shares; `item` names what one example is (a review, a sentence).
        `batch_sizes` and `limits` ({"train_size": ...}) are named as their data.* keys."""
        super().__init__()
        if max_length < 8:
            raise UserError(f"data.max_length={max_length} is below 8: too short to hold a {item}. Use 128 (the default) or more.")
        if pad_to_multiple_of < 1:
            raise UserError(f"data.pad_to_multiple_of={pad_to_multiple_of} must be 1 (pad to the longest {item}) or more.")
        for key, value in batch_sizes.items():
            if value < 1:
                raise UserError(f"data.{key}={value}: a batch holds at least one {item}; use a positive number (the default: 32 to train, 64 to evaluate).")
        for key, value in limits.items():
            if value is not None and value < 1:
                raise UserError(f"data.{key}={value}: keep at least one {item}, or null for every one.")
        self.splits: dict[str, TokenizedSplit] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.load_tokenizer()
            limit = model_limit(self._tokenizer)
            if limit and self.hparams.max_length > limit:
                raise UserError(f"data.max_length={self.hparams.max_length} is above this model's limit of {limit} tokens. Use at most {limit}.")
        return self._tokenizer

    def load_tokenizer(self):
        return load_tokenizer(self.hparams.tokenizer)

    def task_options(self) -> dict:
        """What the task's LightningModule is built with besides its config: the label names."""
        return {"labels": list(self.labels)}

    @classmethod
    def bundled_data(cls, hparams: dict) -> Path | None:
        """Where the data that a run without data.path trains on lies (if anywhere): eval, given that path, must
        read it as training did."""
        return None

    def use_labels(self, labels: list[str]) -> None:
        """Label ids as a trained model has them (eval on other data must not renumber the classes)."""
        if list(map(str, self.labels)) != list(labels):
            raise UserError(f"the model was trained on the labels {', '.join(labels)}, but this data has {', '.join(self.labels)}.")

    def encoded_splits(self) -> dict[str, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.encoded_splits()  # rank 0 only: tokenizes once and fills the cache for every process

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {name: TokenizedSplit(packed) for name, packed in self.encoded_splits().items()}
        if stage == "test":
            rank_zero_info(f"Testing on {self.test_origin}")

    def collator(self) -> PadCollator:
        return PadCollator.for_tokenizer(self.tokenizer, self.hparams.pad_to_multiple_of)

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
