"""Interruptions, full disks and unsafe checkpoints: SIGTERM / Ctrl-C checkpoint the step they stop on and exit
143 / 130 with the resume command; a failed checkpoint write is one `error:` line and no partial file; a checkpoint
whose pickle names anything but tensors and plain containers is refused without being run.

The training runs are those of tests/test_reliability.py (tiny BERT, 200 toy reviews, 12 steps an epoch, its
fixtures and helpers, in tests/conftest.py: one reference run serves both files); `PauseAt` and `FullDisk` are callbacks the subprocesses load from this file.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, metrics_of, only_run, run_script, tiny_overrides

from bertgpt.errors import UserError
from bertgpt.training.checkpoints import (
    AtomicCheckpointIO,
    ensure_writable,
    resume_checkpoint,
)

TESTS = Path(__file__).resolve().parent
SUBPROCESS_ENV = {"PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


class PauseAt(L.Callback):
    """Waits before training step `step` until a signal arrives (at most 2 minutes): the test signals a known step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        print(f"paused at step {self.step}", flush=True)
        deadline = time.time() + 120
        while not trainer.received_sigterm and time.time() < deadline:
            time.sleep(0.05)


class HangAt(PauseAt):
    """Hangs before training step `step` for up to 2 minutes whatever arrives: a step that takes too long to finish."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            print(f"paused at step {self.step}", flush=True)
            time.sleep(120)


class FullDisk(L.Callback):
    """From the first checkpoint on, the disk is full: torch.save writes half a file, then fails with ENOSPC."""

    def setup(self, trainer, pl_module, stage):
        def full(obj, f, *args, **kwargs):
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        torch.save = full


def signal_at_step(logs: Path, overrides: list[str], signum: int, step: int, pause: str = "PauseAt",
                   again_after: str | None = None) -> tuple[int, str]:
    """Starts a training run, sends `signum` while it waits before `step` (and once more when the output shows
    `again_after`); returns its exit status and output."""
    output = logs.parent / f"{logs.name}.out"
    args = [*overrides, f"+callbacks.pause._target_=test_interrupts.{pause}", f"+callbacks.pause.step={step}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while f"paused at step {step}" not in output.read_text():
            assert proc.poll() is None, output.read_text()[-3000:]
            assert time.time() < deadline, "the run never reached the pause"
            time.sleep(0.2)
        proc.send_signal(signum)
        while again_after is not None and again_after not in output.read_text():
            assert proc.poll() is None and time.time() < deadline, output.read_text()[-3000:]
            time.sleep(0.1)
        if again_after is not None:
            proc.send_signal(signum)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return status, output.read_text()


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_resumes_exactly(reference, tiny_bert, workdir):
    logs = workdir / "sigterm"
    overrides = tiny_overrides(tiny_bert, workdir, logs)
    status, output = signal_at_step(logs, overrides, signal.SIGTERM, 16)  # mid-epoch 2, one step after step_15

    assert status == 143, output[-3000:]
    (stopped,) = (logs / "train" / "runs").iterdir()
    checkpoint = stopped / "checkpoints" / "step_000017.ckpt"  # the step it stopped on, not the periodic step_15
    assert checkpoint.is_file() and not (stopped / "checkpoints" / "step_000015.ckpt").exists()
    assert not (stopped / "metrics.json").exists()
    assert "Traceback" not in output
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith(f"stopped by SIGTERM after step 17: checkpoint {checkpoint}. Resume: python src/train.py ")
    assert last_line.endswith(" ckpt_path=last") and "+callbacks.pause" in last_line  # the same overrides

    resumed = run_script("train", *overrides, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    expected, got = metrics_of(reference), metrics_of(only_run(logs))
    for key in ("val/acc", "val/loss", "val/acc_best", "test/acc", "test/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_step_and_exits_130(tiny_bert, workdir):
    logs = workdir / "sigint"
    status, output = signal_at_step(logs, tiny_overrides(tiny_bert, workdir, logs, "trainer.max_epochs=1", "test=false"), signal.SIGINT, 4)

    assert status == 130, output[-3000:]
    (stopped,) = (logs / "train" / "runs").iterdir()
    checkpoint = stopped / "checkpoints" / "step_000005.ckpt"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step_000005.ckpt"]
    assert "Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once)." in output
    assert output.strip().splitlines()[-1].startswith(f"stopped by SIGINT after step 5: checkpoint {checkpoint}. Resume: python src/train.py ")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 5
    assert "Traceback" not in output


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tiny_bert, workdir):
    logs = workdir / "sigint-twice"
    overrides = tiny_overrides(tiny_bert, workdir, logs, "trainer.max_epochs=1", "test=false")
    status, output = signal_at_step(logs, overrides, signal.SIGINT, 4, pause="HangAt", again_after="Ctrl-C again stops at once")

    assert status == 130, output[-3000:]
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("stopped at once by a second Ctrl-C after step 4: the newest checkpoint is "), last_line
    assert last_line.split(": the newest checkpoint is ")[1].split(".ckpt")[0].endswith("step_000003")  # nothing saved for step 4
    assert "Traceback" not in output


def test_full_disk_is_one_line_exit_2_and_no_partial_file(tiny_bert, workdir, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    args = tiny_overrides(tiny_bert, workdir, logs, "trainer.max_epochs=1", "+callbacks.full._target_=test_interrupts.FullDisk")
    monkeypatch.setattr(torch, "save", torch.save)  # FullDisk replaces it inside this process: put it back afterwards
    result = run_script("train", *args)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: could not write the checkpoint ")
    assert "/checkpoints/step_000003.ckpt (12 MB): no space left on device. Free space on the disk holding " in errors[0]
    assert errors[0].endswith("or set paths.log_dir to a disk with room. Nothing was half-written; earlier checkpoints are intact.")
    assert list(logs.rglob("*.ckpt")) == [] and list(logs.rglob("*.tmp")) == []  # no partial file, not even hidden


def test_checkpoint_write_failure_names_size_and_fix(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_000001.ckpt"
    weights = {"state_dict": {"w": torch.zeros(1000, 1000)}}  # 4 MB of float32

    def read_only(obj, f, *args, **kwargs):
        f.write(b"half")
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(torch, "save", read_only)
    with pytest.raises(UserError) as raised:
        AtomicCheckpointIO().save_checkpoint(weights, path)
    assert str(raised.value) == (f"could not write the checkpoint {path} (4.0 MB): read-only file system. Make {path.parent} writable, "
                                 "or set paths.log_dir to a folder you can write to. Nothing was half-written; earlier checkpoints are intact.")
    assert list(path.parent.iterdir()) == []


def test_read_only_checkpoint_folder_fails_before_training(tiny_bert, workdir, tmp_path):
    # Running as root, a chmod would not stop the write: a folder under a regular file cannot be made by anyone.
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(UserError, match=f"cannot write checkpoints to {blocked}/checkpoints: not a directory. Check the folder"):
        ensure_writable(blocked / "checkpoints")
    if os.geteuid() != 0:  # an unwritable folder proper
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UserError, match="permission denied. Make .* writable, or set paths.log_dir"):
            ensure_writable(tmp_path / "ro")

    logs = tmp_path / "logs"
    args = tiny_overrides(tiny_bert, workdir, logs, f"callbacks.model_checkpoint.dirpath={blocked}/checkpoints")
    result = run_script("train", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: cannot write checkpoints to {blocked}/checkpoints: not a directory." in result.stderr
    assert "Traceback" not in result.stderr and "Epoch 0" not in result.stdout  # before the first step


class WritesAFile:
    """A pickle that, when loaded, creates `path`: what a malicious .ckpt could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    from bertgpt.pipeline import load_checkpoint

    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {}, "hyper_parameters": {"net": WritesAFile(str(marker))}}, evil)
    for load in (lambda: load_checkpoint(str(evil)), lambda: resume_checkpoint(str(evil), tmp_path / "runs")):
        with pytest.raises(UserError, match=re.escape(f"ckpt_path={evil}: refused without loading it: its pickle needs builtins.getattr, pathlib.Path, pathlib.PosixPath, which could run code.")):
            load()
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # what eval and predict did: the pickle runs and makes the file
    assert marker.exists()


def test_checkpoints_hold_plain_containers_only(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "plain.ckpt"
    net = OmegaConf.create({"_target_": "bertgpt.models.library.build_classifier", "num_labels": 2})
    AtomicCheckpointIO().save_checkpoint({"hyper_parameters": {"net": net, "betas": (0.9, 0.999)}, "state_dict": {"w": torch.ones(2)}}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"] == {"net": {"_target_": "bertgpt.models.library.build_classifier", "num_labels": 2}, "betas": (0.9, 0.999)}
    assert type(loaded["hyper_parameters"]["net"]) is dict
