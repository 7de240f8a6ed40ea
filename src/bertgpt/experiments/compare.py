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
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bertgpt import ROOT
from bertgpt.cli import clock, compose, exit_on_user_error, hydra_value, override_of, override_value
from bertgpt.errors import UserError
from bertgpt.files import write_text
from bertgpt.host import best_precision, machine
from bertgpt.tasks.language_model import OBJECTIVES

log = logging.getLogger(__name__)

MANIFEST = "compare.json"


@dataclass(frozen=True)
class Arm:
    """One kind of run the compare can make.

    `script`: src/<script>.py. For a fine-tune (train) `model` is its model= option; for a probe or a prompt, the
    checkpoint it reads (a pretraining export when `objective` names one). `options`: what makes the arm itself (the
    mask, the pooling, the prompting method). `seeded`: runs once per seed (a probe or zero-shot prompt is
    deterministic given its inputs: once). `decoder`: the 135M decoder, whose fine-tunes take compare.decoder_seeds
    of the seeds. `curve`: also fine-tuned at each compare.curve_sizes (the learning curve).
    """

    part: str  # the report's section: practical, direction, probes, prompting, controlled
    model: str
    description: str
    objective: str | None = None
    pretrained: bool = True
    task: str = "sentiment"
    script: str = "train"
    options: tuple[str, ...] = ()
    seeded: bool = True
    decoder: bool = False
    curve: bool = False


BERT, DECODER = "all-minilm-l6-v2", "smollm2-135m"  # the bundled checkpoints
# Every fine-tune of the compare keeps its checkpoint's hidden dropout (0.1 in MiniLM and in our pretrained exports,
# none in SmolLM2), as the classic recipe and every recorded compare did: `model=bert`, and the model configs built
# on it, turn it off by default since 2026-12-04 (docs/performance.md, "Hidden dropout").
CHECKPOINT_DROPOUT = "model.net.dropout=null"


def direction(mask: str, pooling: str | None = None, task: str = "sentiment") -> Arm:
    """Our BERT on the bundled MiniLM weights under a bidirectional or causal mask: only the mask (and, for a
    sequence label, the pooled token) differs between these arms. A tagger reads every token: no pooling."""
    causal = mask == "causal"
    what = f"our BERT, {mask} mask" + (f", {pooling} pooling" if pooling else "")
    options = ("model=bert_scratch", f"model.net.causal={str(causal).lower()}")
    return Arm("direction", "bert_scratch", what, task=task, options=options + ((f"model.net.pooling={pooling}",) if pooling else ()))


ARMS = {
    "bert": Arm("practical", "bert", "library BERT", curve=True),
    "bert_scratch": Arm("practical", "bert_scratch", "our BERT"),
    "gpt": Arm("practical", "gpt", "library decoder", decoder=True, curve=True),
    "gpt_scratch": Arm("practical", "gpt_scratch", "our decoder", decoder=True),
    "pos_bert": Arm("practical", "bert", "library BERT", task="pos"),
    "pos_gpt": Arm("practical", "gpt", "library decoder", task="pos", decoder=True),
    **{f"bert_{mask}_{pooling}": direction(mask, pooling) for mask in ("bi", "causal") for pooling in ("cls", "mean", "last")},
    "pos_bert_bi": direction("bi", task="pos"),
    "pos_bert_causal": direction("causal", task="pos"),
    "probe_bert": Arm("probes", BERT, "library BERT, frozen", script="probe", seeded=False),
    "probe_gpt": Arm("probes", DECODER, "library decoder, frozen", script="probe", seeded=False, decoder=True),
    "probe_bert_pos": Arm("probes", BERT, "library BERT, frozen", task="pos", script="probe", seeded=False),
    "probe_gpt_pos": Arm("probes", DECODER, "library decoder, frozen", task="pos", script="probe", seeded=False, decoder=True),
    "gpt_zeroshot": Arm("prompting", DECODER, "library decoder, zero-shot", script="prompt", options=("method=chat", "shots=0"),
                        seeded=False, decoder=True),
    "gpt_kshot": Arm("prompting", DECODER, "library decoder, k-shot", script="prompt", options=("method=chat",), decoder=True),
    "bert_mlm": Arm("controlled", "bert_scratch", "our BERT, MLM-pretrained", "mlm"),
    "gpt_clm": Arm("controlled", "gpt_scratch", "our GPT, CLM-pretrained", "clm"),
    # The controls take only the config and tokenizer of the export: same size and vocabulary, random weights.
    "bert_random": Arm("controlled", "bert_scratch", "our BERT, random init", "mlm", pretrained=False),
    "gpt_random": Arm("controlled", "gpt_scratch", "our GPT, random init", "clm", pretrained=False),
    "pos_bert_mlm": Arm("controlled", "bert_scratch", "our BERT, MLM-pretrained", "mlm", task="pos"),
    "pos_gpt_clm": Arm("controlled", "gpt_scratch", "our GPT, CLM-pretrained", "clm", task="pos"),
    "pos_bert_random": Arm("controlled", "bert_scratch", "our BERT, random init", "mlm", pretrained=False, task="pos"),
    "pos_gpt_random": Arm("controlled", "gpt_scratch", "our GPT, random init", "clm", pretrained=False, task="pos"),
    "bert_mlm_cloze": Arm("prompting", "export", "our BERT, MLM-pretrained, cloze", "mlm", script="prompt",
                          options=("method=cloze",), seeded=False),
}


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
    """The budget of this compare (its scale's values with the command line's overrides), as the report shows it."""
    c = cfg.compare
    keys = ("scale", "train_size", "val_size", "curve_sizes", "decoder_sizes", "curve_min_samples", "direction_train_size", "probe_train_size", "batch_size",
            "lr", "controlled_lr", "warmup_ratio", "epochs", "max_length", "shots", "demo_tokens", "validate", "val_check_interval", "log_every_n_steps")
    values = {k: OmegaConf.to_object(c[k]) if OmegaConf.is_config(c[k]) else c[k] for k in keys}
    chosen = seeds(cfg)
    shots = values["shots"] if isinstance(values["shots"], list) else [values["shots"]]
    if not shots or not all(isinstance(k, int) and k > 0 for k in shots):
        raise UserError(f"compare.shots={values['shots']}: the k of k-shot prompting, a positive integer or a list of them, e.g. compare.shots=[1,4,8].")
    values.update(shots=list(dict.fromkeys(shots)), pos=OmegaConf.to_object(c.pos), pretrain_steps=c.pretrain.steps, pretrain_checkpoints=checkpoints(c.pretrain),
                  pretrain_docs=c.pretrain.docs, seeds=chosen, decoder_seeds=c.decoder_seeds, seed=chosen[0])
    return values


def checkpoints(pretrain: DictConfig) -> list[int]:
    """The intermediate pretraining steps whose exports the controlled arms also fine-tune, in order."""
    steps = list(pretrain.get("checkpoints") or [])
    if any(not isinstance(n, int) or not 0 < n < pretrain.steps for n in steps) or len(set(steps)) != len(steps):
        raise UserError(f"compare.pretrain.checkpoints={steps}: distinct steps between 0 and compare.pretrain.steps={pretrain.steps} "
                        "(the end of the budget is always one), e.g. compare.pretrain.checkpoints=[100,200].")
    return sorted(steps)


def seeds(cfg: DictConfig) -> list[int]:
    """The seeds each seeded arm runs with, in order."""
    chosen = list(dict.fromkeys(cfg.compare.seeds or []))
    if not chosen or not all(isinstance(s, int) for s in chosen):
        raise UserError(f"compare.seeds={chosen}: seeds are integers, e.g. compare.seeds=[2024,2025,2026].")
    return chosen


def data_budget(b: dict, arm: Arm, train_size: int | None) -> list[str]:
    """The data options of a run: the same held-out items for every arm of a task."""
    if arm.task == "pos":
        pos = b["pos"]
        sizes = {"train_size": train_size, "val_size": pos["val_size"], "test_size": pos["test_size"]}
    else:
        sizes = {"train_size": train_size, "val_size": b["val_size"]}
    return [*(f"data.{k}={hydra_value(v)}" for k, v in sizes.items()), f"data.max_length={b['max_length']}"]


def train_budget(b: dict, arm: Arm, seed: int, train_size: int | None, epochs: int) -> list[str]:
    """The src/train.py overrides of a fine-tune, identical across arms but for the arm's own and the seed."""
    validation = [f"++trainer.val_check_interval={b['val_check_interval']}"] if b["validate"] else ["++trainer.limit_val_batches=0"]
    return [
        *([f"task={arm.task}"] if arm.task != "sentiment" else []),
        *data_budget(b, arm, train_size),
        f"data.batch_size={b['batch_size']}",
        f"model.lr={b['controlled_lr'] if arm.part == 'controlled' and b['controlled_lr'] else b['lr']}",
        f"model.warmup_ratio={b['warmup_ratio']}",
        f"trainer.max_epochs={epochs}",
        *validation,
        f"trainer.log_every_n_steps={b['log_every_n_steps']}",
        "trainer.devices=1",
        f"seed={seed}",
    ]


def arm_train_size(b: dict, arm: Arm) -> int | None:
    """How many training items (reviews, or POS sentences) an arm learns from: a POS fine-tune the POS budget's."""
    if arm.task == "pos" and arm.script == "train":
        return b["pos"]["train_size"]
    return {"direction": b["direction_train_size"], "probes": b["probe_train_size"]}.get(arm.part, b["train_size"])


def plan(cfg: DictConfig, out: Path) -> list[Run]:
    """The runs `cfg` asks for, in the order of compare.arms, each pretraining before the first arm that uses it."""
    arms = list(dict.fromkeys(cfg.compare.arms or []))  # an arm named twice runs once
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        problem = "unknown " + ", ".join(unknown) if unknown else "empty"
        raise UserError(f"compare.arms=[{','.join(arms)}]: {problem}. Choose from {', '.join(ARMS)}.")
    b = budget(cfg)
    extra = cfg.compare.arm_overrides or {}
    runs: list[Run] = []
    for name in arms:
        arm = ARMS[name]
        if arm.objective and not any(r.name == f"pretrain_{arm.objective}" for r in runs):
            exports = [f"export_steps=[{','.join(map(str, b['pretrain_checkpoints']))}]"] if b["pretrain_checkpoints"] else []
            runs.append(Run(f"pretrain_{arm.objective}", "pretrain",
                            [f"objective={arm.objective}", f"trainer.max_steps={b['pretrain_steps']}",
                             f"data.max_docs={hydra_value(b['pretrain_docs'])}", *exports, f"seed={b['seed']}", *cfg.compare.pretrain.overrides],
                            "pretraining", OBJECTIVES[arm.objective], {"objective": arm.objective}))
        arm_seeds = (b["seeds"][: b["decoder_seeds"]] if arm.decoder else b["seeds"]) if arm.seeded else [b["seeds"][0]]
        sizes = [arm_train_size(b, arm)] + (list(b["curve_sizes"]) if arm.curve else [])
        if arm.decoder and arm.script == "train":  # the decoder trains several times slower (docs/bert_vs_gpt.md, "Cost"): its own sizes
            sizes = list(b["decoder_sizes"])
        # A pretrained controlled fine-tune also starts from each intermediate export: the trend over pretraining.
        # Its random-init control is step 0.
        trend = arm.objective and arm.script == "train" and arm.pretrained
        pretrain_steps = [*b["pretrain_checkpoints"], b["pretrain_steps"]] if trend else [b["pretrain_steps"] if arm.pretrained else 0]
        # A k-shot prompt runs at each of compare.shots (<arm>_k<k> when there are several).
        k_shot = arm.script == "prompt" and not any(o.startswith("shots=") for o in arm.options)
        shot_counts = b["shots"] if k_shot else [None]
        for size, step, shots in ((size, step, shots) for step in pretrain_steps for size in sizes for shots in shot_counts):
            curve_point = size != sizes[0]
            intermediate = step != pretrain_steps[-1]
            label = f"{name}_n{size}" if curve_point else f"{name}_step{step}" if intermediate else name
            label += f"_k{shots}" if len(shot_counts) > 1 else ""
            epochs = max(b["epochs"], math.ceil(b["curve_min_samples"] / size)) if curve_point else b["epochs"]
            export = hydra_value(out / f"pretrain_{arm.objective}" / (f"export_step{step}" if intermediate else "export")) if arm.objective else None
            for seed in arm_seeds:
                if arm.script == "train":
                    weights = [f"model.net.checkpoint={export}", *([] if arm.pretrained else ["model.net.pretrained=false"])] if export else []
                    overrides = [*(arm.options or [f"model={arm.model}"]), CHECKPOINT_DROPOUT, *weights, *train_budget(b, arm, seed, size, epochs),
                                 *cfg.compare.train_overrides]
                elif arm.script == "probe":
                    overrides = [f"checkpoint={export or arm.model}", f"task={arm.task}", *data_budget(b, arm, size), f"seed={seed}"]
                else:  # prompt
                    demos = [f"shots={shots}", f"demo_tokens={b['demo_tokens']}"] if k_shot else []
                    overrides = [f"checkpoint={export or arm.model}", *arm.options, *demos, *data_budget(b, arm, None), f"seed={seed}"]
                run_name = label if len(arm_seeds) == 1 else f"{label}_seed{seed}"
                info = {"arm": label, "kind": name, "seed": seed, "task": arm.task, "objective": arm.objective, "pretrained": arm.pretrained,
                        "train_size": size if arm.script != "prompt" else 0, "epochs": epochs if arm.script == "train" else None,
                        **({"pretrain_step": step} if arm.objective else {})}
                runs.append(Run(run_name, arm.script, [*overrides, *extra.get(name, [])], arm.part, arm.description, info))
    return runs


def precision(run: Run) -> str | None:
    """The precision a fine-tuning run trains in: its own override, else what the trainer config picks on this machine."""
    if run.script != "train":
        return None
    return override_of(run.overrides, "trainer.precision") or best_precision()


def invocation() -> str:
    """The command that started this process, from the project root (and whether make ran it)."""
    script = Path(sys.argv[0]).resolve()
    command = shlex.join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0], *sys.argv[1:]])
    return command + (" (via make)" if os.environ.get("MAKELEVEL") else "")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def save_manifest(out: Path, manifest: dict) -> None:
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


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
                write_text(log_path, text)
            raise UserError(f"arm {run.name} failed (exit {code}) after {clock(seconds)}: {last_error(text)}  Its log: {log_path}")
    return seconds


def finished(out: Path, run: Run, before: dict) -> dict | None:
    """The record of `run` from an earlier compare into `out` if it finished there with the same command and the same
    settings, else None: a default changed in conf/ since (hidden dropout's, say) changes what the same command runs."""
    record, folder = before.get(run.name), out / run.name
    if not (record and record.get("finished") and record.get("command") == run.command(folder) and (folder / "metrics.json").is_file()):
        return None
    drift = config_drift(folder, run.overrides)
    if drift:
        log.info("conf/ changed since %s ran (%s): it runs again.", run.name, "; ".join(f"{key}: {then} then, {today} now" for key, (then, today) in drift.items()))
        return None
    return record


def run_all(cfg: DictConfig, out: Path) -> Path:
    """Runs every planned arm in `out` (skipping those an earlier compare there finished), recording each in
    compare.json, then writes the report."""
    from bertgpt.experiments.compare_report import write_report

    if cfg.compare.scale == "full":
        import torch

        if not torch.cuda.is_available():
            raise UserError("compare.scale=full trains on the whole data set with 5 seeds (days of decoder fine-tuning on a CPU) and wants a "
                            "GPU; none is visible. Use the default scale, or raise compare.train_size / compare.val_size yourself.")
    runs = plan(cfg, out)
    if cfg.compare.dry_run:
        for run in runs:
            print(f"{run.name}: {run.command(out / run.name)}")
        return out
    missing = sorted({r.script for r in runs} - {p.stem for p in (ROOT / "src").glob("*.py")})
    if missing:
        needing = [r.name for r in runs if r.script in missing]
        raise UserError(f"arms {', '.join(needing)} run src/{missing[0]}.py, which is not here. Leave them out of compare.arms.")
    before = json.loads((out / MANIFEST).read_text())["runs"] if (out / MANIFEST).is_file() else {}
    manifest = {
        "command": invocation(), "date": now(), "machine": machine(), "budget": budget(cfg),
        "runs": {r.name: {"script": r.script, "part": r.part, "description": r.description, **r.info, "precision": precision(r),
                          "command": r.command(out / r.name)} for r in runs},
    }
    done = {r.name: record for r in runs if (record := finished(out, r, before))}
    for name, record in done.items():
        manifest["runs"][name].update(wall_s=record["wall_s"], finished=record["finished"])
    if done:
        log.info("Resuming %s: %d of %d runs finished there already (%s); delete the folder to start over.", out, len(done), len(runs), ", ".join(done))
    save_manifest(out, manifest)
    started = time.perf_counter()
    todo = [r for r in runs if r.name not in done]
    for i, run in enumerate(todo, start=1):
        log.info("[%d/%d] %s (%s), compare %s so far: %s", i, len(todo), run.name, run.description, clock(time.perf_counter() - started), manifest["runs"][run.name]["command"])
        if (out / run.name).exists():  # an interrupted run, or one of another command: start it afresh
            shutil.rmtree(out / run.name)
        try:
            seconds = execute(run, out / run.name, cfg.compare.heartbeat_s, started)
        except BaseException:
            manifest["runs"][run.name].update(failed=now())  # compare.json says where the compare stopped
            save_manifest(out, manifest)
            raise
        manifest["runs"][run.name].update(wall_s=seconds, finished=now())
        save_manifest(out, manifest)
        log.info("[%d/%d] %s done in %s", i, len(todo), run.name, clock(seconds))
    report = write_report(out, Path(cfg.compare.report_dir))
    log.info("All %d runs done (%d now) in %s. Report: %s", len(runs), len(todo), clock(time.perf_counter() - started), report)
    return report


REPRODUCED = "reproduced"  # <compare dir>/reproduced/<run>/: a run again with its own command, and reproduced.json


def measured(folder: Path) -> dict:
    """What a run measured, as opposed to how fast: its test/* metrics, its probe's accuracy per layer, and its
    per-item predictions."""
    metrics = json.loads((folder / "metrics.json").read_text())
    found = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}
    for name, key in (("predictions.json", "prediction"), ("probes.json", "accuracy")):
        if (folder / name).is_file():
            found[f"{name}:{key}"] = json.loads((folder / name).read_text())[key]
    return found


def leaves(node, prefix: str = "") -> dict:
    """A config as {dotted key: value}, lists kept whole."""
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


UNSET = "(unset)"  # a setting one side of a config_drift does not have


def config_drift(run_folder: Path, overrides: list[str]) -> dict[str, tuple] | None:
    """{setting: (its value in the run's saved config, .hydra/config.yaml; what the run's command composes today)}
    for every setting that differs, UNSET on the side that lacks it; None where the run kept no Hydra record."""
    saved, hydra = run_folder / ".hydra" / "config.yaml", run_folder / ".hydra" / "hydra.yaml"
    if not (saved.is_file() and hydra.is_file()):
        return None
    config_name = OmegaConf.load(hydra).hydra.job.config_name
    then = leaves(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    today = leaves(OmegaConf.to_container(compose(config_name, overrides), resolve=False))
    return {key: (then.get(key, UNSET), today.get(key, UNSET)) for key in sorted(then.keys() | today.keys()) if then.get(key, UNSET) != today.get(key, UNSET)}


def settings_since(run_folder: Path, overrides: list[str]) -> list[str]:
    """Overrides that give a run again the settings it ran with, where conf/ has changed since: `++key=value` for each
    setting whose value in the run's saved config differs from what its command composes today (`config_drift`)."""
    drift = config_drift(run_folder, overrides)
    if drift is None:
        log.warning("%s has no .hydra/config.yaml and hydra.yaml: it runs again with today's conf/ defaults.", run_folder.name)
        return []
    restored = [f"++{key}={override_value(then)}" for key, (then, today) in drift.items() if UNSET not in (then, today)]
    for key, (then, today) in drift.items():
        if today == UNSET:
            log.warning("%s ran with %s=%s, a setting conf/ no longer has: it runs again without it.", run_folder.name, key, then)
    if restored:
        log.info("conf/ changed since %s ran; restoring its settings: %s", run_folder.name, " ".join(restored))
    return restored


def reproduce(run_folder: Path, heartbeat_s: float) -> dict:
    """Runs a finished compare run again with the command compare.json recorded for it, plus the settings conf/ has
    changed since (from its saved config), into `<compare dir>/reproduced/<run>`, and compares what the two
    measured; writes reproduced.json there. Raises when they differ."""
    run_folder = run_folder.expanduser().resolve()
    manifest = run_folder.parent / MANIFEST
    record = json.loads(manifest.read_text())["runs"].get(run_folder.name) if manifest.is_file() else None
    if not record or not (run_folder / "metrics.json").is_file():
        raise UserError(f"reproduce={run_folder}: not a finished run of a compare (its folder's compare.json has no such run, or it left no "
                        "metrics.json). Name a run folder, e.g. reproduce=logs/compare/default/bert_seed2024.")
    args = [a for a in shlex.split(record["command"])[2:] if not a.startswith("hydra.run.dir=")]
    restored = settings_since(run_folder, args)
    run = Run(run_folder.name, record["script"], args + restored, record["part"], record["description"])
    again = run_folder.parent / REPRODUCED / run_folder.name
    shutil.rmtree(again, ignore_errors=True)
    log.info("Reproducing %s: %s", run_folder.name, run.command(again))
    seconds = execute(run, again, heartbeat_s, time.perf_counter())
    first, second = measured(run_folder), measured(again)
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    items = len(first.get("predictions.json:prediction") or [])
    result = {"run": run_folder.name, "command": run.command(again), "restored": restored, "date": now(), "machine": machine(), "wall_s": seconds,
              "compared": sorted(first), "items": items, "identical": not differ, "differ": differ,
              "first": {k: v for k, v in first.items() if not k.endswith((":prediction", ":accuracy"))},
              "again": {k: v for k, v in second.items() if not k.endswith((":prediction", ":accuracy"))}}
    write_text(again / "reproduced.json", json.dumps(result, indent=2) + "\n")
    if differ:
        shown = "; ".join(f"{k}: {first.get(k)!r:.40} then {second.get(k)!r:.40}" for k in differ)
        raise UserError(f"{run_folder.name} did not reproduce: {shown}. Both runs: {run_folder} and {again}")
    print(f"{run_folder.name} reproduced: {', '.join(sorted(first))} identical" + (f" ({items:,} predictions)" if items else "") + f". Re-run: {again}")
    return result


def compare(cfg: DictConfig, out: Path) -> Path:
    """What src/compare.py does: the report of a finished compare folder (report_only=...), a run of one re-run
    (reproduce=...), or a new compare in `out`."""
    from bertgpt.experiments.compare_report import write_report

    for key, example in (("reproduce", "logs/compare/default/bert_seed2024"), ("report_only", "logs/compare/default")):
        if cfg.get(key) == "":  # `key=` (make reproduce without RUN=) is Hydra's empty string: not a new compare
            raise UserError(f"{key}= names no folder: give one ({key}={example}), or leave {key} out for a new compare.")
    if cfg.get("reproduce"):
        reproduce(Path(cfg.reproduce), cfg.compare.heartbeat_s)
        return Path(cfg.reproduce)
    if cfg.report_only:
        report = write_report(Path(cfg.report_only).expanduser(), Path(cfg.compare.report_dir), regenerated_by=invocation())
        print(f"Report: {report}")
        return report
    return run_all(cfg, out)


def main(cfg: DictConfig, out: Path) -> None:
    """src/compare.py: a UserError (a bad option, a failed arm) prints one `error: ...` line and exits 2.

    Not `bertgpt.cli.cli`: that removes the run folder of a failed run, and here it holds the finished arms and the
    failed arm's log that the error names. Only a compare that started no arm (a bad option, report_only, dry_run)
    leaves no folder behind.
    """
    # SIGTERM (a scheduler, `kill`) as an exception: the running arm is stopped by `execute` and compare.json says
    # where the compare stopped, instead of the arm running on, orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        exit_on_user_error(lambda: compare(cfg, out))
    finally:
        if not (out / MANIFEST).exists() and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
