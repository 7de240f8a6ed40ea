"""Checkpoint files that survive a crash or a full disk, load without running code, and finding the newest one to
resume from (`ckpt_path=last`)."""

from __future__ import annotations

import errno
import tempfile
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import Container, OmegaConf

from bertgpt.errors import UserError
from bertgpt.files import atomic_file
from bertgpt.training.safe_load import is_sharded_checkpoint, refuse_unsafe_pickle


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, syncs it, then renames it into place.

    Lightning's own writer stages the file in the system temp folder and moves it: when that folder is on another
    file system (tmpfs /tmp), the move is a copy, and a kill mid-copy leaves a truncated `.ckpt` behind.
    A rename within one folder is atomic: a reader sees the old file or the new one, never half of one.

    A failed write (full disk, read-only or forbidden folder) is a UserError naming the file, its size and the
    fix, with no partial file left. What is written holds plain containers only (`plain_containers`), so that
    every reader can load it with `weights_only=True`.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        path = Path(path)
        checkpoint = plain_containers(checkpoint)
        try:
            with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a hidden .tmp beside it, synced, renamed: never a *.ckpt
                torch.save(checkpoint, f)
        except OSError as err:
            raise UserError(write_failure(f"could not write the checkpoint {path} ({megabytes(tensor_bytes(checkpoint))})", err, path.parent)) from err


def plain_containers(obj):
    """`obj` with every OmegaConf config turned into dicts and lists.

    The module's hyperparameters hold the `net` config as Hydra passed it, a DictConfig: pickled as is, it makes
    the checkpoint loadable only with `weights_only=False`, which lets a file run code. Only dicts, lists and
    tuples are walked; tensors and everything else are kept as they are (not copied).
    """
    if isinstance(obj, Container):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return type(obj)({key: plain_containers(value) for key, value in obj.items()})  # dict, OrderedDict
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):  # not a namedtuple: its type takes fields
        return type(obj)(plain_containers(value) for value in obj)
    return obj


def tensor_bytes(obj) -> int:
    """The bytes the tensors in `obj` hold: about the size of the file torch.save writes for it."""
    if torch.is_tensor(obj):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0


def megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB"


def write_failure(what: str, err: OSError, folder: Path) -> str:
    """One line for a failed write: what, why (the OS's words), and the fix."""
    reason = (err.strerror or str(err)).lower()
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"Free space on the disk holding {folder}, or set paths.log_dir to a disk with room."
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"Make {folder} writable, or set paths.log_dir to a folder you can write to."
    else:
        fix = "Check the folder, or set paths.log_dir to another one."
    return f"{what}: {reason}. {fix} Nothing was half-written; earlier checkpoints are intact."


def ensure_writable(*folders: str | Path) -> None:
    """Fails before training, in one line, if a checkpoint folder cannot be made or written to.

    Called on the folders the checkpoint callbacks write to: when resuming, that is the folder of the checkpoint
    resumed from, which may be a read-only copy.
    """
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise UserError(write_failure(f"cannot write checkpoints to {folder}", err, folder).split(" Nothing was")[0]) from err


def newest_checkpoint(root: Path, pattern: str = "*/checkpoints/*.ckpt") -> Path | None:
    """The most recently written checkpoint matching `root/pattern` (by default in any run folder), or None.

    Symlinks are skipped: if a user sets `save_last: link`, `last.ckpt` points at the best epoch, not the latest
    state; the step and epoch files themselves are all here.
    """
    files = [p for p in root.glob(pattern) if (p.is_file() or is_sharded_checkpoint(p)) and not p.is_symlink()]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def resume_checkpoint(ckpt_path: str | None, runs_dir: Path) -> Path | None:
    """The checkpoint `train` resumes from: `last` is the newest under `runs_dir`, a path must be a checkpoint file."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = newest_checkpoint(runs_dir)
        if found is None:
            raise UserError(f"ckpt_path=last: no checkpoint under {runs_dir}/*/checkpoints/ to resume from. Train without ckpt_path first.")
        refuse_unsafe_pickle(found / "meta.pt" if found.is_dir() else found, f"ckpt_path=last ({found})")
        return found
    file = Path(ckpt_path).expanduser()
    if is_sharded_checkpoint(file):
        refuse_unsafe_pickle(file / "meta.pt", f"ckpt_path={ckpt_path}")
        return file
    if not file.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such file. Pass ckpt_path=last (the newest checkpoint) or a .ckpt under {runs_dir}/<run>/checkpoints/.")
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a truncated or foreign file is not one
        raise UserError(f"ckpt_path={ckpt_path}: not a checkpoint (not a torch.save archive, or truncated). Use a .ckpt written by src/train.py.")
    refuse_unsafe_pickle(file, f"ckpt_path={ckpt_path}")
    return file
