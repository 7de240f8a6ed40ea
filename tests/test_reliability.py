"""Reliability: bad input fails in one clear line, a killed run resumes exactly, runs repeat, DDP matches one
process, nothing reaches for the network, and a diverging run stops with its last good checkpoint intact.

The training runs use a 2-layer, 32-wide BERT on 200 toy reviews (12 steps an epoch) in subprocesses, as a user
would run them. `StallAt`, `StallInValidation` and `PoisonAt` below are callbacks those subprocesses load from
this file (tests/ on their PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import (
    ROOT,
    metrics_of,
    only_run,
    run_in_process,
    run_script,
    tiny_overrides,
    write_csv,
)
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertgpt import host
from bertgpt.data.base import ResumableSampler
from bertgpt.data.reviews import IMDBDataModule, load_corpus
from bertgpt.errors import UserError
from bertgpt.training.checkpoints import (
    AtomicCheckpointIO,
    newest_checkpoint,
    resume_checkpoint,
)

TESTS = Path(__file__).resolve().parent


class StallAt(L.Callback):
    """Hangs before training step `step`, so the test can SIGKILL the run mid-epoch at a known point."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.stall()

    def stall(self):
        print(f"stalled at step {self.step}", flush=True)
        time.sleep(600)


class StallInValidation(StallAt):
    """Hangs in the validation that follows training step `step`."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_validation_start(self, trainer, pl_module):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            self.stall()


class PoisonAt(L.Callback):
    """Turns the classifier's weights to NaN before training step `step`: the loss of that step is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.classifier.weight.fill_(float("nan"))


def curves(run: Path) -> dict[str, dict[int, float]]:
    """A run's TensorBoard loss and accuracy curves: {tag: {step: value}}."""
    out: dict[str, dict[int, float]] = {}
    for events in sorted((run / "tensorboard").glob("*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in ("train/loss", "val/loss", "val/acc"):
            if tag in accumulator.Tags()["scalars"]:
                out.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return out


# --- bad input: one line, exit 2, nothing left behind ---------------------------------------------------


def assert_clean_failure(result: subprocess.CompletedProcess, message: str, logs: Path) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert [p for p in logs.rglob("*") if p.is_file()] == []  # no half-made run folder


@pytest.mark.parametrize(
    "family, overrides, message",
    [  # test_cli.py runs the missing-file, max_length, model-folder, checkpoint and empty-text families already
        ("data content, found inside trainer.fit", ["data.path={single_class}"], "the data holds only label 1: sentiment needs both classes"),
        ("constructor option", ["+trainer.fooo=1"], "trainer: Trainer.__init__() got an unexpected keyword argument 'fooo'. Fix its spelling or drop it"),
        ("resume checkpoint", ["ckpt_path=last"], "ckpt_path=last: no checkpoint under"),
        ("a switch Hydra reads as a string", ["activation_checkpointing=no"], "activation_checkpointing=no: give true or false."),
    ],
)
def test_train_bad_input_exits_2_with_one_line(family, overrides, message, tiny_bert, workdir, tmp_path):
    logs = tmp_path / "logs"
    single_class = write_csv(tmp_path / "one.csv", ["good", "great", "fine"], [1, 1, 1])
    overrides = [o.format(single_class=single_class) for o in overrides]
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, *overrides))
    assert_clean_failure(result, message, logs)


def test_an_unknown_allocator_exits_2_before_anything_runs(tiny_bert, workdir, tmp_path):
    """BERTGPT_ALLOCATOR is read as the command starts, in a process of its own (in the tests' process no command
    re-runs itself)."""
    logs = tmp_path / "logs"
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs), env={"BERTGPT_ALLOCATOR": "jemalloc"}, subprocess_=True)
    assert_clean_failure(result, "error: BERTGPT_ALLOCATOR=jemalloc: choose mimalloc (the default) or glibc", logs)


def test_hydra_full_error_shows_the_traceback(tiny_bert, workdir, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}  # run_script drops it: call the in-process runner itself
    args = tiny_overrides(tiny_bert, workdir, tmp_path, "data.max_length=4")
    result = run_in_process([str(ROOT / "src" / "train.py"), *args], ROOT, env)
    assert result.returncode != 0 and "Traceback" in result.stderr and "data.max_length=4 is below 8" in result.stderr


def csv_file(tmp_path: Path, content: bytes | str, name: str = "r.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("", "r.csv", "r.csv: the file is empty"),
        ("text,label\n", "r.csv", "r.csv: no rows"),
        ("text,stars\nfine,5\n", "r.csv", r"no column 'label' \(found: text, stars\). Set data.text_column / data.label_column"),
        ("text,label\nfine,positive\nmeh,so-so\n", "r.csv", r"row at line 3: unknown label 'so-so'. Labels must be one of"),
        ("text,label\nfine,1\n ,0\n", "r.csv", "row at line 3: empty text"),
        (b"text,label\nfine,1\ncaf\xe9,0\n", "r.csv", "line 3: bytes that are not UTF-8"),
        ('{"text": "fine", "label": 1}\n{"text": \n', "r.jsonl", "not valid JSON"),
        ("fine\n", "r.txt", "unknown file type '.txt'"),
    ],
)
def test_table_bad_input_names_file_line_and_fix(tmp_path, content, name, message):
    with pytest.raises(UserError, match=message):
        load_corpus(path=csv_file(tmp_path, content, name))


def test_pair_folder_missing_a_file_or_the_layout(tmp_path):
    (tmp_path / "pair").mkdir()
    (tmp_path / "pair" / "labels.txt").write_text("positive\n")
    with pytest.raises(UserError, match=r"reviews.txt: no such file. Check data.path"):
        load_corpus(path=str(tmp_path / "pair"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither reviews.txt \\+ labels.txt, an aclImdb layout .*, nor a folder written by datasets' save_to_disk"):
        load_corpus(path=str(tmp_path / "empty"))


def test_a_split_that_leaves_a_set_empty(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "r.csv", ["good", "bad", "fine", "awful", "great"], [1, 0, 1, 0, 1])
    with pytest.raises(UserError, match="5 reviews cannot be split 90%/10%: a set would be empty"):
        IMDBDataModule(tokenizer=tiny_bert, path=str(path)).raw_splits()


def test_predict_with_only_blank_text_or_lines(tmp_path):
    from bertgpt.inference import predict

    for content, message in (("", "empty.txt: the file is empty"), ("  \n", r"empty.txt, line 1: blank line")):
        (tmp_path / "empty.txt").write_text(content)
        with pytest.raises(UserError, match=message):
            predict(OmegaConf.create({"text": None, "file": str(tmp_path / "empty.txt"), "ckpt_path": None, "batch_size": 8}))
    with pytest.raises(UserError, match="nothing to predict"):
        predict(OmegaConf.create({"text": "", "file": None, "ckpt_path": None, "batch_size": 8}))


def test_checkpoint_path_missing_or_not_a_checkpoint(tmp_path):
    from bertgpt.pipeline import load_checkpoint

    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="ckpt_path=/nope.ckpt: no such file"):
        resume_checkpoint("/nope.ckpt", runs)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a checkpoint"):
        resume_checkpoint(str(text), runs)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a checkpoint written by src/train.py"):
        load_checkpoint(str(foreign))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(foreign.read_bytes()[:200])
    with pytest.raises(UserError, match="not a checkpoint"):
        resume_checkpoint(str(truncated), runs)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(truncated))


def test_unknown_constructor_option_becomes_a_user_error():
    import hydra

    from bertgpt.cli import user_error

    with pytest.raises(Exception) as raised:
        hydra.utils.instantiate({"model": {"_target_": "bertgpt.tasks.classification.SequenceClassifier", "net": {}, "labels": ["a", "b"], "lrr": 1}})
    err = user_error(raised.value)
    assert isinstance(err, UserError)
    assert "model: Classifier.__init__() got an unexpected keyword argument 'lrr'" in str(err)


# --- crash safety: atomic files, SIGKILL mid-epoch, exact resume ------------------------------------------


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    assert io.load_checkpoint(path)["step"] == 1

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_newest_checkpoint_skips_links_and_other_files(tmp_path):
    runs = tmp_path / "runs"
    old, new = runs / "a" / "checkpoints", runs / "b" / "checkpoints"
    for folder in (old, new):
        folder.mkdir(parents=True)
    (old / "epoch_000.ckpt").write_bytes(b"x")
    (new / "step_000006.ckpt").write_bytes(b"x")
    os.utime(old / "epoch_000.ckpt", (1, 1))
    (new / "last.ckpt").symlink_to(old / "epoch_000.ckpt")
    (new / ".step_000009.ckpt.abc.tmp").write_bytes(b"x")  # an interrupted write
    assert newest_checkpoint(runs) == new / "step_000006.ckpt"
    assert newest_checkpoint(tmp_path / "nothing") is None


def test_sampler_order_depends_on_seed_and_epoch_and_can_start_mid_epoch():
    data = list(range(40))
    full = ResumableSampler(data, seed=7)
    full.set_epoch(1)
    order = list(full)
    assert sorted(order) == data and order != data
    partial = ResumableSampler(data, seed=7, skip=16)
    partial.set_epoch(1)
    assert list(partial) == order[16:]
    assert list(partial) == order  # the skip applies to the interrupted epoch only
    partial.set_epoch(2)
    assert list(partial) != order
    shards = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=7)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data  # ranks split the epoch, nothing repeated (40 is even)


def test_first_run_tokenizes_once_and_caches_one_file(tiny_bert, workdir, tmp_path, monkeypatch):
    from bertgpt.data import tokenize

    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(workdir / "toy.csv"), cache_dir=str(tmp_path))
    dm.prepare_data()  # tokenizes and caches; calling the tokenizer used to change the cache key
    monkeypatch.setattr(tokenize, "encode", lambda *a, **k: pytest.fail("tokenized a second time"))
    dm.setup()
    assert len(list((tmp_path / "tokenized").glob("*.pt"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "stall, at, resumes_from",
    [
        ("StallAt", 16, 15),  # mid-epoch 2 (epoch 1 ends at step 12), right after the step-15 checkpoint
        ("StallInValidation", 12, 9),  # in epoch 1's validation: no step checkpoint at an epoch's last batch
    ],
)
def test_sigkill_then_resume_last_matches_an_uninterrupted_run(stall, at, resumes_from, reference, tiny_bert, workdir):
    logs = workdir / f"killed-{stall}"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("HYDRA_FULL_ERROR", None)
    args = tiny_overrides(tiny_bert, workdir, logs, f"+callbacks.stall._target_=test_reliability.{stall}", f"+callbacks.stall.step={at}")
    output = workdir / f"{stall}.out"
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (list(logs.glob(f"train/runs/*/checkpoints/step_{resumes_from:06d}.ckpt")) and f"stalled at step {at}" in output.read_text()):
            assert proc.poll() is None, output.read_text()[-3000:]
            assert time.time() < deadline, "the run never reached the kill point"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (killed,) = (logs / "train" / "runs").iterdir()
    assert not (killed / "metrics.json").exists()

    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, "ckpt_path=last"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {killed}/checkpoints/step_{resumes_from:06d}.ckpt" in result.stdout + result.stderr
    resumed = only_run(logs)
    expected, got = metrics_of(reference), metrics_of(resumed)
    for key in ("val/acc", "val/loss", "val/acc_best", "test/acc", "test/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert Path(got["best_checkpoint"]).name == Path(expected["best_checkpoint"]).name
    assert Path(got["best_checkpoint"]).parent == killed / "checkpoints"  # one lineage, one checkpoints folder
    # every step's loss after the resume is the uninterrupted run's (and so is whatever the killed run had flushed)
    expected_curves = curves(reference)
    after = curves(resumed)
    assert sorted(after["train/loss"]) == list(range(resumes_from, 24))
    for run_curves in (curves(killed), after):
        for tag, values in run_curves.items():
            assert values == pytest.approx({step: expected_curves[tag][step] for step in values}, abs=1e-6), tag


# --- reproducibility --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("process", ["this one", "its own"])
def test_same_seed_gives_identical_metrics_and_curves(process, reference, tiny_bert, workdir):
    """Run again here, or as a command in a process of its own, which puts mimalloc in front of glibc's malloc
    where it is installed (`host.rerun_under_mimalloc`): the allocator changes where tensors live, not a result."""
    logs = workdir / f"again in {process}"
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs), subprocess_=process == "its own")
    assert result.returncode == 0, result.stderr[-3000:]
    allocator = host.commands_allocator() if process == "its own" else "glibc"
    assert f"Allocator {allocator}: freed memory kept for the next step" in (only_run(logs) / "train.log").read_text()
    first, second = metrics_of(reference), metrics_of(only_run(logs))
    timing = {"train/epoch_time_s", "train/samples_per_sec", "train/tokens_per_sec", "train/peak_memory_mb", "best_checkpoint"}
    assert {k: v for k, v in second.items() if k not in timing} == {k: v for k, v in first.items() if k not in timing}
    assert curves(only_run(logs)) == curves(reference)
    assert len(curves(reference)["train/loss"]) == 24


@pytest.mark.slow
def test_compiled_training_writes_checkpoints_that_eval_reads(reference, tiny_bert, workdir):
    """compile=true trains through torch.compile; its checkpoints keep the plain names, so eval loads them as they are."""
    logs = workdir / "compiled"
    # One batch shape and one epoch: Inductor compiles a graph per new shape, minutes on a 2-core AVX2 CPU.
    overrides = tiny_overrides(tiny_bert, workdir, logs, "compile=true", "data.pad_to_multiple_of=32", "trainer.max_epochs=1",
                               "data.batch_size=20", "data.eval_batch_size=20")  # 180 train, 20 val reviews: every batch (20, 32)
    result = run_script("train", *overrides, timeout=900, subprocess_=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(logs)
    metrics = metrics_of(run)
    assert 0 < metrics["train/loss_epoch"] < 5 and 0 <= metrics["val/acc"] <= 1
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state.keys() == torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"].keys()
    evaluated = run_script("eval", f"ckpt_path={metrics['best_checkpoint']}", f"paths.log_dir={workdir / 'compiled-eval'}", "trainer.precision=32-true")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"test/acc: {metrics['test/acc']:.4f}" in evaluated.stdout


# --- distributed --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT without dropout: DDP draws other masks per rank, the arithmetic is otherwise the same."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    BertForSequenceClassification.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return str(folder)


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tiny_bert_no_dropout, workdir):
    # 15 validation reviews: an odd count, which a padding DistributedSampler would even out with a repeat.
    common = ["trainer.max_epochs=1", "data.val_size=15"]
    ddp_logs, single_logs = workdir / "ddp", workdir / "single"
    ddp = run_script("train", *tiny_overrides(tiny_bert_no_dropout, workdir, ddp_logs, *common, "trainer=ddp_cpu", "data.batch_size=8"), subprocess_=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_script("train", *tiny_overrides(tiny_bert_no_dropout, workdir, single_logs, *common, "data.batch_size=16"))
    assert single.returncode == 0, single.stderr[-3000:]

    (run,) = (ddp_logs / "train" / "runs").iterdir()  # rank 1 wrote into rank 0's folder, made no other
    assert len(list(run.rglob("metrics.json"))) == 1
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert checkpoint_names(run) == checkpoint_names(only_run(single_logs))  # Lightning saves from rank 0 only
    # 2 ranks x 8 reviews per step = the single process's 16: the same steps, synced metrics over all 15 reviews
    got, expected = metrics_of(run), metrics_of(only_run(single_logs))
    for key in ("val/acc", "test/acc"):
        assert got[key] == expected[key], key
    # Losses to 5e-4: each rank pads its half batch to its own width, and one process sorts its evaluation batches
    # by length while the ranks do not; in bf16 a review's logits move slightly with its batch's padded width.
    for key in ("val/loss", "test/loss", "train/loss_epoch"):
        assert got[key] == pytest.approx(expected[key], abs=5e-4), key


# --- offline ------------------------------------------------------------------------------------------------


def test_bundled_model_and_data_never_touch_the_network(monkeypatch):
    from bertgpt.models.library import build, load_tokenizer

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = build("all-minilm-l6-v2")
    assert load_tokenizer("all-minilm-l6-v2")("a fine film")["input_ids"]
    assert model.config.num_labels == 2
    corpus = load_corpus(source="bundled")
    assert len(corpus.train) == 25_000
    assert attempts == []


def test_missing_optional_model_fails_fast_offline(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network blocked by the test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
    )
    # Without HF_HUB_OFFLINE the hub client retries 5 times with backoff first: the same message after ~50 s.
    env = {"PYTHONPATH": str(blocker), "HF_HUB_OFFLINE": "1"}
    started = time.time()
    result = run_script("train", "model.net.checkpoint=bert-base-uncased", f"paths.log_dir={tmp_path / 'logs'}", env=env, timeout=120, subprocess_=True)
    assert_clean_failure(result, "could not load 'bert-base-uncased'", tmp_path / "logs")
    assert "Offline, use the bundled models: model=bert" in result.stderr
    assert time.time() - started < 60  # fails, does not hang on retries


# --- numerical faults -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_bert, workdir):
    from bertgpt.pipeline import load_checkpoint

    logs = workdir / "nan"
    result = run_script(
        "train", *tiny_overrides(tiny_bert, workdir, logs, "+callbacks.poison._target_=test_reliability.PoisonAt", "+callbacks.poison.step=7"),
        env={"PYTHONPATH": str(TESTS)},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (run,) = (logs / "train" / "runs").iterdir()
    last_good = run / "checkpoints" / "step_000006.ckpt"
    assert "error: the loss is nan at step 7: training diverged. Lower model.lr" in result.stderr
    assert f"Last good checkpoint: {last_good}." in result.stderr
    model, _, _ = load_checkpoint(str(last_good))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run / "metrics.json").exists()
