"""Reading the user's text files: UTF-8, one item a line, errors that name the file and the line.

Without Lightning (or scikit-learn): predict's `file=...` reads its lines here.
"""

from __future__ import annotations

from pathlib import Path

from bertgpt.errors import UserError


def read_text(path: Path) -> str:
    """A data file's text as a plain UTF-8 file would give it, whatever saved it: every reader goes through here.

    Windows tools (Notepad, Excel's "CSV UTF-8") start the file with a byte-order mark, which would otherwise
    glue itself to the first label or column name; their CRLF (and old Mac CR) line ends become "\\n".
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file. Check data.path.")
    try:
        return path.read_text(encoding="utf-8-sig")  # text mode: universal line ends
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: bytes that are not UTF-8 ({err.reason}). Re-encode the file as UTF-8.") from None


def read_lines(path: Path) -> list[str]:
    """Lines of a one-item-per-line file; a trailing newline ends the last line, it does not add an empty one."""
    lines = read_text(path).splitlines()
    if not lines:
        raise UserError(f"{path}: the file is empty.")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise UserError(f"{path}, line {number}: blank line. Remove it: every line must hold one item.")
    return lines
