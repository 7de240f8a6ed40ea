"""Checkpoint files that survive a crash, and finding the newest one to resume from (`ckpt_path=last`)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bertgpt.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, syncs it, then renames it into place.

    Lightning's own writer stages the file in the system temp folder and moves it: when that folder is on another
    file system (tmpfs /tmp), the move is a copy, and a kill mid-copy leaves a truncated `.ckpt` behind.
    A rename within one folder is atomic: a reader sees the old file or the new one, never half of one.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # not *.ckpt: never found as one
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def newest_checkpoint(root: Path, pattern: str = "*/checkpoints/*.ckpt") -> Path | None:
    """The most recently written checkpoint matching `root/pattern` (by default in any run folder), or None.

    Symlinks are skipped: if a user sets `save_last: link`, `last.ckpt` points at the best epoch, not the latest
    state; the step and epoch files themselves are all here.
    """
    files = [p for p in root.glob(pattern) if p.is_file() and not p.is_symlink()]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def resume_checkpoint(ckpt_path: str | None, runs_dir: Path) -> Path | None:
    """The checkpoint `train` resumes from: `last` is the newest under `runs_dir`, a path must be a checkpoint file."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = newest_checkpoint(runs_dir)
        if found is None:
            raise UserError(f"ckpt_path=last: no checkpoint under {runs_dir}/*/checkpoints/ to resume from. Train without ckpt_path first.")
        return found
    file = Path(ckpt_path).expanduser()
    if not file.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such file. Pass ckpt_path=last (the newest checkpoint) or a .ckpt under {runs_dir}/<run>/checkpoints/.")
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a truncated or foreign file is not one
        raise UserError(f"ckpt_path={ckpt_path}: not a checkpoint (not a torch.save archive, or truncated). Use a .ckpt written by src/train.py.")
    return file
