"""Files and folders that appear whole or not at all: every writer of the project goes through these two.

Each is written beside its destination under a hidden temporary name and renamed into place. A rename within
one folder is atomic, so a reader (or a run resumed after a crash) sees the old file or the new one, never half
of one, and a failed write leaves nothing behind. Writing beside the target matters: a temporary file in /tmp
(often another file system) would be copied, not renamed, and a kill mid-copy leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; once the block has written it, it is synced and renamed to `path`.

    The temporary name ends in `.tmp`, never in the target's suffix, so a half-written `x.ckpt` is never
    found by a glob for `*.ckpt`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; once the block has filled it, it becomes `path`.

    With `replace`, an existing `path` is removed only after the new folder is complete. Without it, an
    existing `path` (another process finished first) is kept and the new one discarded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not replace:
                return
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
