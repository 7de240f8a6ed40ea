"""`make compare`: every arm as its own run of our CLIs under one budget, then the report.

Each arm is a subprocess (`python src/train.py ...`, `python src/pretrain.py ...`) rather than a call in this
process, so that it is exactly what a user would run, its throughput and memory are its own, and one arm's
allocations do not count against the next. The runs land in `<compare dir>/<name>/` with their usual files plus
`output.log` (everything the process printed); `compare.json` there records what ran, for the report writer
(`bertgpt.experiments.compare_report`), which reads only those files and can be re-run alone: `report_only=<compare dir>`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from bertgpt import ROOT
from bertgpt.cli import exit_on_user_error, hydra_value
from bertgpt.errors import UserError
from bertgpt.host import best_precision, machine

log = logging.getLogger(__name__)

MANIFEST = "compare.json"


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run: `model` is the src/train.py option; `objective` names the pretraining it starts from."""

    part: str  # "practical" or "controlled"
    model: str
    description: str
    objective: str | None = None
    pretrained: bool = True


ARMS = {
    "bert": Arm("practical", "bert", "library BERT"),
    "bert_scratch": Arm("practical", "bert_scratch", "our BERT"),
    "gpt": Arm("practical", "gpt", "library decoder"),
    "gpt_scratch": Arm("practical", "gpt_scratch", "our decoder"),
    "bert_mlm": Arm("controlled", "bert_scratch", "our BERT, MLM-pretrained", "mlm"),
    "gpt_clm": Arm("controlled", "gpt_scratch", "our GPT, CLM-pretrained", "clm"),
    # The controls take only the config and tokenizer of the export: same size and vocabulary, random weights.
    "bert_random": Arm("controlled", "bert_scratch", "our BERT, random init", "mlm", pretrained=False),
    "gpt_random": Arm("controlled", "gpt_scratch", "our GPT, random init", "clm", pretrained=False),
}
PRETRAINING = {"mlm": "our BERT, masked LM", "clm": "our GPT, next token"}


@dataclass
class Run:
    name: str  # its folder under the compare dir
    script: str  # src/<script>.py
    overrides: list[str]
    part: str  # "practical", "controlled" or "pretraining"
    description: str
    info: dict = field(default_factory=dict)  # what the report needs besides the run's own files

    def argv(self, folder: Path) -> list[str]:
        return [sys.executable, str(ROOT / "src" / f"{self.script}.py"), *self.overrides, f"hydra.run.dir={hydra_value(folder)}"]

    def command(self, folder: Path) -> str:
        """The command a user would type (`python src/...`), for the log and the report."""
        return shlex.join(["python", f"src/{self.script}.py", *self.argv(folder)[2:]])


def budget(cfg: DictConfig) -> dict:
    """The shared budget; full=true lifts the size limits (the whole data) and takes the GPU pretraining steps."""
    c = cfg.compare
    values = {k: c[k] for k in ("train_size", "val_size", "batch_size", "lr", "warmup_ratio", "epochs", "max_length", "seed", "val_check_interval", "log_every_n_steps")}
    values.update(pretrain_steps=c.pretrain.steps, pretrain_docs=c.pretrain.docs, seeds=seeds(cfg))
    if cfg.full:
        values.update(train_size=None, val_size=None, pretrain_docs=None, pretrain_steps=c.pretrain.full_steps)
    return values


def seeds(cfg: DictConfig) -> list[int]:
    """The seeds each fine-tuning arm runs with: compare.seeds, else compare.seed alone."""
    chosen = list(dict.fromkeys(cfg.compare.get("seeds") or [cfg.compare.seed]))
    if not all(isinstance(s, int) for s in chosen):
        raise UserError(f"compare.seeds={chosen}: seeds are integers, e.g. compare.seeds=[2024,2025,2026].")
    return chosen


def train_budget(b: dict, seed: int) -> list[str]:
    """The src/train.py overrides every fine-tuning arm gets, identical across arms (and across seeds but the seed)."""
    return [
        f"data.train_size={hydra_value(b['train_size'])}",
        f"data.val_size={hydra_value(b['val_size'])}",
        f"data.batch_size={b['batch_size']}",
        f"data.max_length={b['max_length']}",
        f"model.lr={b['lr']}",
        f"model.warmup_ratio={b['warmup_ratio']}",
        f"trainer.max_epochs={b['epochs']}",
        f"++trainer.val_check_interval={b['val_check_interval']}",  # ++: set it whether or not the trainer config names it
        f"trainer.log_every_n_steps={b['log_every_n_steps']}",
        "trainer.devices=1",
        f"seed={seed}",
    ]


def plan(cfg: DictConfig, out: Path) -> list[Run]:
    """The runs `cfg` asks for, in order: the practical arms, then each pretraining before the arms that use it."""
    arms = list(dict.fromkeys(cfg.compare.arms or []))  # an arm named twice runs once
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        problem = "unknown " + ", ".join(unknown) if unknown else "empty"
        raise UserError(f"compare.arms=[{','.join(arms)}]: {problem}. Choose from {', '.join(ARMS)}.")
    b = budget(cfg)
    extra = cfg.compare.arm_overrides or {}
    pretraining = [
        Run(f"pretrain_{objective}", "pretrain", [f"objective={objective}", f"trainer.max_steps={b['pretrain_steps']}",
            f"data.max_docs={hydra_value(b['pretrain_docs'])}", f"seed={b['seed']}", *cfg.compare.pretrain.overrides],
            "pretraining", description, {"objective": objective})
        for objective, description in PRETRAINING.items() if any(ARMS[a].objective == objective for a in arms)
    ]
    finetuning = []
    for name in sorted(arms, key=list(ARMS).index):  # ARMS order: the practical part first, the quickest arms first
        arm = ARMS[name]
        weights = []
        if arm.objective:
            weights = [f"model.net.checkpoint={hydra_value(out / f'pretrain_{arm.objective}' / 'export')}"]
            weights += [] if arm.pretrained else ["model.net.pretrained=false"]
        for seed in b["seeds"]:  # one seed: the run is the arm's name; more: <arm>_seed<seed>, read together by the report
            common = [*train_budget(b, seed), *cfg.compare.train_overrides]
            finetuning.append(Run(name if len(b["seeds"]) == 1 else f"{name}_seed{seed}", "train",
                                  [f"model={arm.model}", *weights, *common, *extra.get(name, [])], arm.part, arm.description,
                                  {"arm": name, "seed": seed, "objective": arm.objective, "pretrained": arm.pretrained}))
    # Pretraining after the practical arms: its exports are only needed by the controlled ones.
    return [r for r in finetuning if r.part == "practical"] + pretraining + [r for r in finetuning if r.part == "controlled"]


def precision(run: Run) -> str | None:
    """The precision a fine-tuning run trains in: its own override, else what the trainer config picks on this machine."""
    if run.script != "train":
        return None
    chosen = [o.split("=", 1)[1] for o in run.overrides if o.startswith("trainer.precision=")]
    return chosen[-1] if chosen else best_precision()


def invocation() -> str:
    """The command that started this process, from the project root (and whether make ran it)."""
    script = Path(sys.argv[0]).resolve()
    command = shlex.join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0], *sys.argv[1:]])
    return command + (" (via make)" if os.environ.get("MAKELEVEL") else "")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def save_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def last_error(output: str) -> str:
    """The line of a failed run's output that says what went wrong: its `error:` line, else the last one that is
    not one of Hydra's hints (for a traceback, that is the exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error: ", "Could not override"))]  # ours, Hydra's
    hints = ("Set the environment variable HYDRA_FULL_ERROR", "See https://hydra.cc")
    return (errors or [line for line in lines if not line.startswith(hints)] or [""])[-1]


def execute(run: Run, folder: Path, heartbeat_s: float, started: float) -> float:
    """Runs `run` with its output streamed to `folder/output.log`; returns its wall time or raises naming the log."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "output.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)  # the arm's own bad input should read as its one `error:` line
    t0 = time.perf_counter()
    with open(log_path, "w+b") as sink:
        sink.write(f"$ {run.command(folder)}\n".encode())
        sink.flush()
        child = subprocess.Popen(run.argv(folder), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    code = child.wait(timeout=heartbeat_s)
                    break
                except subprocess.TimeoutExpired:
                    log.info("  %s: %s so far (compare %s)", run.name, clock(time.perf_counter() - t0), clock(time.perf_counter() - started))
        finally:
            if child.poll() is None:  # interrupted: leave no arm running behind us
                child.terminate()
                child.wait()
        seconds = time.perf_counter() - t0
        if code != 0:
            # src/train.py removes the folder of a run that failed on its input: put back the log we still hold.
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if not log_path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                log_path.write_text(text)
            raise UserError(f"arm {run.name} failed (exit {code}) after {clock(seconds)}: {last_error(text)}  Its log: {log_path}")
    return seconds


def run_all(cfg: DictConfig, out: Path) -> Path:
    """Runs every planned arm in `out`, recording each in compare.json, then writes the report."""
    from bertgpt.experiments.compare_report import write_report

    if cfg.full:
        import torch

        if not torch.cuda.is_available():
            raise UserError("full=true trains on the whole data set (hours per decoder arm on a CPU) and wants a GPU; none is visible. "
                            "Drop full=true for the CPU budget, or raise compare.train_size / compare.val_size yourself.")
    runs = plan(cfg, out)
    if cfg.compare.dry_run:
        for run in runs:
            print(f"{run.name}: {run.command(out / run.name)}")
        return out
    if any(r.script == "pretrain" for r in runs) and not (ROOT / "src" / "pretrain.py").exists():
        needing = [r.name for r in runs if r.part == "controlled"]
        raise UserError(f"arms {', '.join(needing)} start from src/pretrain.py, which is not here. Leave them out: compare.arms=[bert,bert_scratch,gpt,gpt_scratch]")
    manifest = {
        "command": invocation(), "date": now(), "machine": machine(), "full": bool(cfg.full), "budget": budget(cfg),
        "runs": {r.name: {"script": r.script, "part": r.part, "description": r.description, **r.info, "precision": precision(r),
                          "command": r.command(out / r.name)} for r in runs},
    }
    save_manifest(out, manifest)
    started = time.perf_counter()
    for i, run in enumerate(runs, start=1):
        log.info("[%d/%d] %s (%s), compare %s so far: %s", i, len(runs), run.name, run.description, clock(time.perf_counter() - started), manifest["runs"][run.name]["command"])
        try:
            seconds = execute(run, out / run.name, cfg.compare.heartbeat_s, started)
        except BaseException:
            manifest["runs"][run.name].update(failed=now())  # compare.json says where the compare stopped
            save_manifest(out, manifest)
            raise
        manifest["runs"][run.name].update(wall_s=seconds, finished=now())
        save_manifest(out, manifest)
        log.info("[%d/%d] %s done in %s", i, len(runs), run.name, clock(seconds))
    report = write_report(out, Path(cfg.compare.report_dir))
    log.info("All %d runs done in %s. Report: %s", len(runs), clock(time.perf_counter() - started), report)
    return report


def compare(cfg: DictConfig, out: Path) -> Path:
    """What src/compare.py does: the report of a finished compare folder (report_only=...), or a new compare in `out`."""
    from bertgpt.experiments.compare_report import write_report

    if cfg.report_only:
        report = write_report(Path(cfg.report_only).expanduser(), Path(cfg.compare.report_dir), regenerated_by=invocation())
        print(f"Report: {report}")
        return report
    return run_all(cfg, out)


def main(cfg: DictConfig, out: Path) -> None:
    """src/compare.py: a UserError (a bad option, a failed arm) prints one `error: ...` line and exits 2.

    Not `pipeline.cli`: that removes the run folder of a failed run, and here it holds the finished arms and the
    failed arm's log that the error names. Only a compare that started no arm (a bad option, report_only, dry_run)
    leaves no folder behind.
    """
    try:
        exit_on_user_error(lambda: compare(cfg, out))
    finally:
        if not (out / MANIFEST).exists() and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
