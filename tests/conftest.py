"""Fixtures: tiny randomly initialised BERT / GPT-2 folders and a separable toy review set, all made offline."""

from __future__ import annotations

import csv
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertgpt import ROOT

# Under pytest-xdist (`make test` runs TEST_WORKERS workers) each worker, and every script it starts, takes an equal
# share of the cores: workers that each used all of them would oversubscribe OpenMP, whose threads spin on each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)

POSITIVE = "great wonderful superb moving brilliant delightful charming masterpiece loved excellent".split()
NEGATIVE = "awful boring dull terrible waste painful clumsy dreadful hated worst".split()
NEUTRAL = "the film movie plot actor scene story director camera music ending cast".split()


def toy_reviews(n: int = 200, seed: int = 0) -> tuple[list[str], list[int]]:
    """Reviews whose sentiment words give the label away: a model that learns anything gets ~100%."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.choices(NEUTRAL, k=rng.randint(4, 12)) + rng.choices(POSITIVE if label else NEGATIVE, k=3)
        rng.shuffle(words)
        texts.append(" ".join(words) + (" <br /><br />" if i % 7 == 0 else ""))
        labels.append(label)
    return texts, labels


def write_csv(path: Path, texts, labels, text_column="text", label_column="label") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([text_column, label_column])
        writer.writerows(zip(texts, labels))
    return path


def windows_copy(path: Path, to: Path | None = None) -> Path:
    """The file as Windows Notepad or Excel saves it (UTF-8 with a byte-order mark, CRLF line ends): at `to`, or
    beside it as windows-<name>."""
    copy = to or path.with_name(f"windows-{path.name}")
    copy.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return copy


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", *toy_reviews())


def minilm_dir() -> Path:
    from bertgpt.models.hub import resolve_checkpoint

    return Path(resolve_checkpoint("all-minilm-l6-v2"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BertForSequenceClassification on the bundled uncased WordPiece vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer GPT-2 with its own byte-level BPE: like the real one, it has no pad token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    texts, _ = toy_reviews(400, seed=1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# SmolLM2's template in small: a default system turn unless the messages bring one.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny assistant<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_QUESTION = "Is the sentiment of this movie review positive or negative?"


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory) -> str:
    """A 2-layer Llama (rotary positions, grouped-query attention, as SmolLM2) with a byte-level BPE and a chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-chat")
    texts, _ = toy_reviews(400, seed=1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts + [CHAT_QUESTION, "positive negative assistant user system"] * 20, vocab_size=500, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         intermediate_size=80, max_position_embeddings=1024, rope_theta=1000.0, tie_word_embeddings=True, initializer_range=0.5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def bench_script(name: str):
    """bench/<name>.py imported as a module (the bench scripts import `common` from their own folder)."""
    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def compose_train(*overrides: str):
    """conf/train.yaml composed with `overrides` as src/train.py composes it (the project's resolvers registered)."""
    from hydra import compose, initialize_config_dir

    from bertgpt import cli  # noqa: F401  (the resolvers)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_script(script: str, *overrides: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600,
               subprocess_: bool = False) -> subprocess.CompletedProcess:
    """Runs src/<script>.py as a user would, with these arguments, and returns its exit status and output.

    In this process by default (`run_in_process`): a fresh interpreter costs ~12 s of imports on a 2-core AVX2
    machine, and the suite runs dozens of scripts. `subprocess_=True` for what needs a process of its own:
    signals, kills, several ranks, a network that must fail, torch.compile.
    """
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    argv = [str(ROOT / "src" / f"{script}.py"), *overrides]
    if subprocess_:
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    return run_in_process(argv, cwd, environment)


def run_in_process(argv: list[str], cwd: Path, environment: dict) -> subprocess.CompletedProcess:
    """`python argv...` inside this interpreter: its own argv, environment, working folder and Hydra state; its
    output captured; its exit status from SystemExit (an uncaught exception is status 1, with its traceback)."""
    import contextlib
    import io
    import logging
    import runpy
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    code = 0
    try:
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(cwd)
        sys.argv = list(argv)
        GlobalHydra.instance().clear()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001  (what a real process would print before dying with status 1)
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def fresh_logs(tmp_path) -> Path:
    """A logs/ of the test's own, so runs never land in the repo's logs/."""
    logs = tmp_path / "logs"
    logs.mkdir()
    yield logs
    shutil.rmtree(logs, ignore_errors=True)


# --- short training runs in subprocesses: tests/test_reliability.py and tests/test_interrupts.py --------------

STEPS = 3  # step checkpoint interval in these runs: 12 steps an epoch, so 3, 6, 9, 12, 15, ...


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Toy data and a shared token cache for the training runs of the reliability and interrupt tests."""
    root = tmp_path_factory.mktemp("reliability")
    write_csv(root / "toy.csv", *toy_reviews())
    return root


def tiny_overrides(tiny_bert: str, workdir: Path, logs: Path, *extra: str) -> list[str]:
    """A short deterministic run of the tiny BERT on the toy reviews; `extra` adds or replaces `key=value`s."""
    settings = {
        "model.net.checkpoint": tiny_bert, "data.path": workdir / "toy.csv", "data.cache_dir": workdir / "cache",
        "paths.log_dir": logs, "data.max_length": 32, "data.batch_size": 16, "model.lr": 1e-2, "trainer.max_epochs": 2,
        "trainer.precision": "32-true", "trainer.deterministic": "true", "trainer.log_every_n_steps": 1,
        "callbacks.step_checkpoint.every_n_train_steps": STEPS,
    }
    settings.update(item.split("=", 1) if "=" in item else (item, None) for item in extra)  # ~key deletes
    return [key if value is None else f"{key}={value}" for key, value in settings.items()]


def only_run(logs: Path) -> Path:
    (run,) = [p for p in (logs / "train" / "runs").iterdir() if (p / "metrics.json").exists()]
    return run


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="session")
def reference(tiny_bert, workdir) -> Path:
    """An uninterrupted 2-epoch run, seed 2024: what the resumed and repeated runs must reproduce."""
    logs = workdir / "reference"
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Checkpoints go to {only_run(logs)}/checkpoints" in result.stdout + result.stderr
    return only_run(logs)


# --- tiny random classifiers of every family: tests/test_lora.py and tests/test_freeze.py ---------------------

V, PAD, LABELS = 100, 0, 3  # their vocabulary, pad id and label count


def tiny_net(kind: str) -> torch.nn.Module:
    """A 2-layer random sequence classifier of each family; ours in the layouts that export (BERT, Llama)."""
    import transformers

    from bertgpt.models import bert, gpt

    torch.manual_seed(0)
    if kind == "hf_bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, num_labels=LABELS, pad_token_id=PAD))
    if kind == "hf_gpt2":
        return transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
            vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, num_labels=LABELS, pad_token_id=PAD))
    if kind == "hf_llama":
        return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
            vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, max_position_embeddings=32, tie_word_embeddings=True, num_labels=LABELS, pad_token_id=PAD))
    if kind == "our_bert":
        return bert.BertForSequenceClassification(bert.BertConfig(
            vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, n_inner=64, num_labels=LABELS, pad_token_id=PAD))
    return gpt.GPTForSequenceClassification(gpt.GPTConfig(
        vocab_size=V, block_size=32, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, n_inner=80, norm="rmsnorm",
        positions="rotary", mlp="swiglu", bias=False, num_labels=LABELS, pad_token_id=PAD))


@pytest.fixture
def batch():
    """Four right-padded rows of 10 tokens, pads carrying the pad id as the tokenizer writes them."""
    torch.manual_seed(1)
    ids = torch.randint(1, V, (4, 10))
    mask = (torch.arange(10) < torch.tensor([[10], [7], [4], [9]])).long()
    return ids.masked_fill(mask == 0, PAD), mask


def logits_of(net, batch) -> torch.Tensor:
    out = net(input_ids=batch[0], attention_mask=batch[1])
    return out if isinstance(out, torch.Tensor) else out.logits
