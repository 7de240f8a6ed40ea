"""The console scripts (`bertgpt-train`, ...) and `python src/<name>.py` are the same commands."""

from __future__ import annotations

import importlib
import os

import pytest
from conftest import only_run, run_in_process, run_script, tiny_overrides
from omegaconf import OmegaConf

from bertgpt import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS = ["train", "eval", "predict", "pretrain", "compare", "export", "attention-maps", "probe", "prompt"]


def console_script(name: str, folder) -> str:
    """The launcher pip writes into the venv's bin/ for `name` (its exact text, setuptools' template)."""
    module, function = SCRIPTS[name].split(":")
    path = folder / name
    path.write_text(
        f"import re\nimport sys\nfrom {module} import {function}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({function}())\n"
    )
    return str(path)


def run_console(name: str, *args: str, cwd):
    """`bertgpt-<name> args...` as a shell would run it, from `cwd` (not the checkout), in this process."""
    return run_in_process([console_script(f"bertgpt-{name}", cwd), *args], cwd, {**os.environ, "PYTHONUNBUFFERED": "1"})


def test_every_command_has_a_console_script_to_its_function():
    assert sorted(SCRIPTS) == sorted(f"bertgpt-{c}" for c in COMMANDS)
    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert f"from bertgpt.entries import {function}\n" in (ROOT / "src" / f"{name[8:].replace('-', '_')}.py").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_console_script_composes_the_same_config_as_the_src_script(command, tmp_path):
    args = ["--cfg", "job", "text=Good, not great: 7/10", "task_name=probe"] if command in ("predict", "attention-maps") else ["--cfg", "job", "task_name=probe"]
    console = run_console(command, *args, cwd=tmp_path)
    script = run_script(command.replace("-", "_"), *args)
    assert console.returncode == script.returncode == 0, console.stderr[-2000:] + script.stderr[-2000:]
    assert console.stdout == script.stdout
    printed = OmegaConf.create(console.stdout)
    assert printed.task_name == "probe"
    if command in ("predict", "attention-maps"):  # passed verbatim: Hydra's grammar would otherwise split it at the comma
        assert printed.text == "Good, not great: 7/10"


def test_console_script_keeps_the_error_policy(tmp_path):
    result = run_console("pretrain", "objective=nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: objective=nope: unknown objective.")
    result = run_console("eval", f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: ckpt_path is not set." in result.stderr


@pytest.mark.slow
def test_console_train_from_another_folder_writes_the_same_run(tiny_bert, workdir, tmp_path):
    logs = tmp_path / "logs"
    result = run_console("train", *tiny_overrides(tiny_bert, workdir, logs, "trainer.max_epochs=1", "logger=none"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(logs)
    assert (run / "train.log").stat().st_size > 0
    saved = OmegaConf.merge(*(OmegaConf.load(run / ".hydra" / f) for f in ("config.yaml", "hydra.yaml")))
    assert saved.hydra.job.name == "train"  # the command's name, as src/train.py's was, not "entries"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bertgpt-train", "logs"]  # nothing written to the cwd


@pytest.mark.parametrize(("orig_argv", "argv", "command"), [
    (["python", str(ROOT / "src" / "train.py"), "model=gpt"], [str(ROOT / "src" / "train.py"), "model=gpt"], "train"),
    (["python", "-X", "importtime", "/venv/bin/bertgpt-attention-maps", "text=x"], ["/venv/bin/bertgpt-attention-maps", "text=x"], "attention_maps"),
    (["python", "-m", "pytest", "tests"], [str(ROOT / "src" / "train.py"), "model=gpt"], None),  # a test running the script in its process
    (["python", "my_script.py"], ["my_script.py"], None),  # other code importing the commands
])
def test_only_a_process_started_as_a_command_may_rerun_itself(orig_argv, argv, command, monkeypatch):
    """`entries` re-runs such a process under mimalloc (`host.rerun_under_mimalloc`): a test's or a user's own
    process must never be replaced."""
    from bertgpt import entries

    monkeypatch.setattr(entries.sys, "orig_argv", orig_argv)
    monkeypatch.setattr(entries.sys, "argv", argv)
    assert entries.started_as() == command
