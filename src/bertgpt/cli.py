"""What every entry script shares: the error policy, the config resolvers, and quoting values for Hydra.

The policy: a mistake the user can fix (`UserError`) prints one `error: ...` line naming the problem and the
fix, and the process exits 2; anything else is a bug and keeps its traceback. `HYDRA_FULL_ERROR=1` shows the
traceback of a user error too.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from bertgpt import ROOT
from bertgpt.errors import UserError, fail
from bertgpt.host import best_precision, keep_freed_memory

OmegaConf.register_new_resolver("best_precision", best_precision, replace=True)
# On a GPU, worker processes and pinned memory overlap batch assembly and the copy with the step. On a CPU the
# workers would take the cores the step needs, and the tokens are cached, so the main process batches.
OmegaConf.register_new_resolver("loader_workers", lambda: min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0, replace=True)
OmegaConf.register_new_resolver("pad_multiple", lambda: 64 if torch.cuda.is_available() else 1, replace=True)
OmegaConf.register_new_resolver("on_gpu", lambda: torch.cuda.is_available(), replace=True)


def user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`: Hydra's instantiate wraps what a constructor raises.

    An option the constructor does not take (`+trainer.fooo=1`) is a user error too: Hydra reports it as a
    TypeError inside an InstantiationException, which would otherwise exit 1 and leave the run folder behind.
    """
    while err is not None and not isinstance(err, UserError):
        cause = err.__cause__
        if isinstance(err, InstantiationException) and isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            key = re.search(r"full_key: (\S+)", str(err))
            return UserError(f"{key.group(1) if key else 'config'}: {cause}. Fix its spelling or drop it (python src/train.py --cfg job prints every option).")
        err = cause
    return err


def exit_on_user_error(run: Callable[[], object], cleanup: Callable[[], None] | None = None):
    """`run()`; a user error behind what it raises prints one line and exits 2, after `cleanup()`."""
    try:
        return run()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        if cleanup is not None:
            cleanup()
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(cause))


def cli(task: Callable[[DictConfig], object]):
    """Wraps a Hydra entry point in the error policy. A run that failed on its input leaves no run folder
    behind; the run keeps the memory it frees for its next step (`host.keep_freed_memory`)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig

        keep_freed_memory()
        return exit_on_user_error(lambda: task(cfg), lambda: discard_run_dir(HydraConfig.get().runtime.output_dir))

    return wrapper


def discard_run_dir(output_dir: str) -> None:
    """A run that failed on its input leaves nothing behind in logs/ (only its config and log would be there)."""
    # Imported here: predict imports this module, and must not pay for Lightning.
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    path = Path(output_dir)
    if path.is_dir() and not any(path.rglob("*.ckpt")):
        shutil.rmtree(path, ignore_errors=True)


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """`conf/<config_name>.yaml` with `key=value` overrides, as `hydra.main` composes it, without its run folder,
    log file and logging set-up: for a command that writes nothing (predict), or for a command to look at another
    run's config (compare's reproduce). A bad override is a user error."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    outer = get_gh_backup()  # inside a hydra.main run Hydra is initialized: compose beside it, then give it back
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3", job_name=config_name):
            return compose(config_name, overrides)
    except HydraException as err:  # an unknown key, a missing group option, a grammar error: Hydra's own words
        raise UserError(" ".join(str(err).split())) from err
    finally:
        restore_gh_from_backup(outer)


def clock(seconds: float) -> str:
    """A duration for a log line: 4:05, 1:02:03, or ? where it is not known yet (a rate of zero, a NaN)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def hydra_quote(text: str) -> str:
    """`text` as one quoted Hydra override value. Hydra unescapes backslashes only before a quote or the closing
    quote: double just those, and escape the quotes."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def hydra_value(value) -> str:
    """`value` as a Hydra override value: None is null; a path with characters its grammar parses ([, ], =, spaces) is quoted."""
    if value is None:
        return "null"
    text = str(value)
    return text if re.fullmatch(r"[\w./~+:@%-]+", text) else hydra_quote(text)


def override_value(value) -> str:
    """`value` (a config leaf: None, bool, number, string, or a list or dict of them) in Hydra's override grammar,
    typed as it was: unlike `hydra_value`, a string is always quoted, so "true" or "123" stays a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return hydra_quote(str(value))


def override_of(overrides: list[str], key: str) -> str | None:
    """The value the last of `overrides` that names `key` gives it, as Hydra applies them in order: `key=v`, `+key=v`
    and `++key=v` set it, `~key` deletes it; None where none sets it (the config's own value stands)."""
    value = None
    for override in overrides:
        name, _, given = override.lstrip("+~").partition("=")
        if name == key:
            value = None if override.startswith("~") else given
    return value


def verbatim_text_argument(argv: list[str]) -> list[str]:
    """Quotes `text=...` for Hydra: reviews and sentences hold commas, colons and quotes its grammar would parse."""
    return [f"text={hydra_quote(a[5:])}" if a.startswith("text=") and not a[5:].startswith(("'", '"')) else a for a in argv]
