"""Reading a checkpoint without running code. No Lightning here: predict (bertgpt.inference) reads checkpoints too."""

from __future__ import annotations

from pathlib import Path

import torch

from bertgpt.errors import UserError


def refuse_unsafe_pickle(file: Path, shown: str) -> None:
    """Refuses, without running it, a checkpoint whose pickle needs more than tensors and plain containers.

    `torch.load(weights_only=False)` on a shared .ckpt would run whatever its pickle names. This reads the names
    only (`get_unsafe_globals_in_checkpoint` scans the opcodes, it does not unpickle); our own checkpoints name
    none (`plain_containers`).
    """
    try:
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # not a torch.save archive: the caller's own check names that
        return
    if unsafe:
        names = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        raise UserError(
            f"{shown}: refused without loading it: its pickle needs {names}, which could run code. Use a .ckpt "
            "written by this version of src/train.py (docs/reliability.md shows how to convert an older one you trust)."
        )


def load_checkpoint_safely(file: Path, shown: str) -> dict:
    """A checkpoint's contents, read with `weights_only=True`: tensors and plain containers, never code.

    Memory-mapped: a tensor is read from the file when it is used, so eval and predict, which use the weights,
    never read the optimizer's state (two thirds of a training checkpoint)."""
    refuse_unsafe_pickle(file, shown)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise UserError(f"{shown}: not a readable checkpoint ({type(err).__name__}). Use a .ckpt written by src/train.py.") from None


def is_sharded_checkpoint(path: Path) -> bool:
    """A folder of shards, one per rank, and the rest of the state in meta.pt: what `trainer=model_parallel` writes
    with `trainer.strategy.save_distributed_checkpoint=true`. Lightning loads it into the same sharded run."""
    return path.is_dir() and (path / "meta.pt").is_file()
