"""Hugging Face `datasets` files, for both tasks: a folder written by `save_to_disk` (one Dataset or a DatasetDict),
a Parquet file, an Arrow file (`Dataset.from_file`).

The `datasets` library is imported only when such a file is read, so the bundled data never pays for its import.
A DatasetDict's train / validation / test splits are the source's own split, as a folder's train / dev / test
files are; one split alone (or a plain Dataset) is split by the task like any single file. Columns holding
ClassLabel ids (a review's label, a sentence's tags) come back as their names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bertgpt.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("hf_disk", "parquet", "arrow")  # their data.source names, the same for every task
SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
OWN_SPLITS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}  # name parts of a source's own split files or splits


def own_split(name: str) -> str | None:
    """train, val or test: the part of a source's own split that a file or split name holds (ud-dev.conllu, validation)."""
    lowered = name.lower()
    return next((split for split, parts in OWN_SPLITS.items() if any(part in lowered for part in parts)), None)


def detect_format(path: Path) -> str | None:
    """hf_disk, parquet or arrow when `path` is one (`save_to_disk` leaves a state.json or a dataset_dict.json); else None."""
    if path.is_dir():
        return "hf_disk" if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() else None
    return SUFFIXES.get(path.suffix.lower())


def load_splits(path: Path, source: str) -> dict:
    """{"train", "val" (if any), "test" (if any): Dataset} for a DatasetDict of several splits, else {"all": Dataset}."""
    import datasets
    import pyarrow
    import pyarrow.parquet

    try:
        if source == "hf_disk":
            loaded = datasets.load_from_disk(str(path))
        elif source == "parquet":  # the table as it is: Dataset.from_parquet would first copy it into the HF cache
            loaded = datasets.Dataset(pyarrow.parquet.read_table(path))
        else:
            loaded = datasets.Dataset.from_file(str(path))
    except (FileNotFoundError, pyarrow.ArrowException) as err:
        written_by = {"hf_disk": "Dataset.save_to_disk", "parquet": "Dataset.to_parquet", "arrow": "Dataset.save_to_disk"}[source]
        raise UserError(f"{path}: not a readable {source} dataset ({err}). Expected what datasets' {written_by} writes.") from None
    if not isinstance(loaded, datasets.DatasetDict):
        return {"all": loaded}
    if len(loaded) == 1:
        return {"all": next(iter(loaded.values()))}
    splits, unused = {}, []
    for name, split in loaded.items():
        role = own_split(name)
        if role is None or role in splits:
            unused.append(name)
        else:
            splits[role] = split
    if "train" not in splits:
        raise UserError(f"{path}: splits {', '.join(loaded)}, none of them a training split. Name it train "
                        "(with validation and test if you have them), or save the one Dataset.")
    if unused:
        log.warning("%s: split(s) %s not read: only train, validation (or dev) and test are.", path, ", ".join(unused))
    return splits


def read_columns(split, names: list[str], where: str, options: str) -> list[list]:
    """The named columns of a Dataset as Python lists, ClassLabel ids (also in lists, as tags are) turned into their
    names; a missing column is an error naming the columns there are and `options`, the settings that pick them."""
    import datasets

    for name in names:
        if name not in split.column_names:
            raise UserError(f"{where}: no column '{name}' (found: {', '.join(split.column_names)}). Set {options}.")
    table = split.with_format("arrow")
    columns = []
    for name in names:
        values, feature = table[name].to_pylist(), split.features[name]
        inner = getattr(feature, "feature", None)  # a List / Sequence of per-word values
        if isinstance(feature, datasets.ClassLabel):
            values = [class_name(feature, v) for v in values]
        elif isinstance(inner, datasets.ClassLabel):
            values = [None if row is None else [class_name(inner, v) for v in row] for row in values]
        columns.append(values)
    return columns


def class_name(feature, value):
    """A ClassLabel id's name; an id outside its names (-1: no label) stays as it is, for the reader to refuse."""
    return feature.names[value] if isinstance(value, int) and 0 <= value < len(feature.names) else value
