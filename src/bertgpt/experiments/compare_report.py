"""The report of a compare folder: tables, plots and a TensorBoard summary, from that folder's files only.

Reads `compare.json` (what ran, the budget, the machine, each run's wall time) and, for each run, its
`metrics.json`, TensorBoard events and `predictions.json` (each held-out review's label and prediction: the
intervals and the paired-bootstrap verdicts of `experiments.stats`); writes `<report dir>/compare.md` with `compare_*.png` beside it, and
`<compare dir>/summary/` (the tables as text and the figures, for `tensorboard --logdir`). Nothing is written
under its final name until everything is made, so a failure never leaves half a report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from bertgpt import ROOT
from bertgpt.errors import UserError
from bertgpt.experiments.stats import (
    RESAMPLES,
    bootstrap_accuracy,
    paired_bootstrap,
    t_interval,
)

REPORT = "compare.md"
PARTS = {
    "practical": "Practical: library vs ours, on the same bundled weights",
    "controlled": "Controlled: our BERT vs our GPT, one size and tokenizer, pretrained the same way",
}


@dataclass
class RunFiles:
    """What one run left behind: metrics.json, its scalar series from TensorBoard, and compare.json's record."""

    name: str
    info: dict
    metrics: dict
    series: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)  # tag -> (step, seconds, value)
    predictions: dict | None = None  # predictions.json: "label" and "prediction" per held-out review, in order

    def points(self, tag: str) -> list[tuple[int, float, float]]:
        return self.series.get(tag, [])

    @property
    def correct(self) -> np.ndarray | None:
        """1 where the run got a held-out review right, in the test split's order; None without predictions.json."""
        if not self.predictions:
            return None
        return np.equal(self.predictions["label"], self.predictions["prediction"]).astype(float)


def read_events(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar series in the newest TensorBoard log under `folder`, with seconds since that log opened."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per event file it opens
    files = sorted(folder.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    accumulator = EventAccumulator(str(files[-1].parent), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    # The log opens once the model is built, before the first step: the time axis counts training, validation
    # and checkpoints, not loading the weights.
    start = accumulator.FirstEventTimestamp()
    return {tag: [(e.step, e.wall_time - start, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def saved_config(run: Path, key: str) -> str:
    """`key` from the config the run saved (.hydra/config.yaml), "" when it has none."""
    from omegaconf import OmegaConf

    config = run / ".hydra" / "config.yaml"
    return str(OmegaConf.select(OmegaConf.load(config), key, default="") or "") if config.is_file() else ""


def weights(folder: Path, run: Path) -> str:
    """The weights a fine-tuning run started from (model.net.checkpoint in its saved config): a bundled name, or a
    folder, shown relative to the compare folder when it is one of its pretraining exports."""
    checkpoint = saved_config(run, "model.net.checkpoint")
    path = Path(checkpoint)
    if path.is_absolute():
        return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name
    return checkpoint


def read_run(folder: Path, name: str, info: dict) -> RunFiles:
    metrics_file = folder / name / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(f"{folder}: run {name} has no metrics.json (it did not finish). Its log: {folder / name / 'output.log'}")
    layers, width = saved_config(folder / name, "model.n_layer"), saved_config(folder / name, "model.n_embd")  # pretraining's size
    info = {**info, "weights": weights(folder, folder / name), "size": f"{layers} x {width}" if layers and width else ""}
    predictions = folder / name / "predictions.json"  # sentiment runs write it; older ones and pretraining do not
    return RunFiles(name, info, json.loads(metrics_file.read_text()), read_events(folder / name),
                    json.loads(predictions.read_text()) if predictions.is_file() else None)


def read_compare(folder: Path) -> tuple[dict, list[RunFiles]]:
    manifest_file = folder / "compare.json"
    if not manifest_file.is_file():
        raise UserError(f"report_only={folder}: not a compare folder (no compare.json). Compares are under logs/compare/runs/.")
    manifest = json.loads(manifest_file.read_text())
    return manifest, [read_run(folder, name, info) for name, info in manifest["runs"].items()]


# -- cells -------------------------------------------------------------------------------------------------------


def number(value: float | None) -> str:
    """Three significant figures or more, with thousands separators: 4.45, 33.1, 4,464."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def count(value: float | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def train_seconds(run: RunFiles) -> float | None:
    """Training time over all epochs (validation excluded): the sum of each epoch's train/epoch_time_s."""
    epochs = run.points("train/epoch_time_s")
    return sum(v for _, _, v in epochs) if epochs else run.metrics.get("train/epoch_time_s")


def steps(run: RunFiles) -> float | None:
    """Optimizer steps a pretraining run took: its own count if it writes one, else the last step it logged."""
    for key in ("train/steps", "trainer/global_step", "global_step", "step"):
        if key in run.metrics:
            return run.metrics[key]
    logged = [step for points in run.series.values() for step, _, _ in points]
    return max(logged) if logged else None


FINETUNE_COLUMNS = {
    "weights": lambda r: f"`{r.info['weights']}`" if r.info.get("weights") else "n/a",
    "params": lambda r: count(r.metrics.get("params/total")),
    "trainable": lambda r: count(r.metrics.get("params/trainable")),
    "train samples/s": lambda r: number(r.metrics.get("train/samples_per_sec")),
    "tokens/s": lambda r: number(r.metrics.get("train/tokens_per_sec")),
    "peak memory (MiB)": lambda r: number(r.metrics.get("train/peak_memory_mb")),
    "train time (s)": lambda r: number(train_seconds(r)),
    "wall time (s)": lambda r: number(r.info.get("wall_s")),
    "held-out acc": lambda r: percent(r.metrics.get("test/acc")),
    "F1": lambda r: number(r.metrics.get("test/f1")),
}
PRETRAIN_COLUMNS = {
    "layers x width": lambda r: r.info.get("size") or "n/a",
    "params": lambda r: count(r.metrics.get("params/total")),
    "steps": lambda r: count(steps(r)),
    "val loss": lambda r: number(r.metrics.get("val/loss")),
    "val ppl": lambda r: number(r.metrics.get("val/ppl")),
    "token acc": lambda r: percent(r.metrics.get("val/token_acc")),
    "train samples/s": lambda r: number(r.metrics.get("train/samples_per_sec")),
    "tokens/s": lambda r: number(r.metrics.get("train/tokens_per_sec")),
    "peak memory (MiB)": lambda r: number(r.metrics.get("train/peak_memory_mb")),
    "wall time (s)": lambda r: number(r.info.get("wall_s")),
}
# Pairs worth a sentence: (a, b, what a - b measures).
CONTRASTS = [
    ("bert_scratch", "bert", "ours vs the library, BERT"),
    ("gpt_scratch", "gpt", "ours vs the library, decoder"),
    ("gpt", "bert", "decoder vs BERT, bundled weights"),
    ("bert_mlm", "bert_random", "what MLM pretraining buys our BERT"),
    ("gpt_clm", "gpt_random", "what CLM pretraining buys our GPT"),
    ("gpt_clm", "bert_mlm", "GPT vs BERT, same size, tokenizer and pretraining budget"),
]


def table(runs: list[RunFiles], columns: dict) -> str:
    header = ["run", "model", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        lines.append("| " + " | ".join([f"`{run.name}`", run.info.get("description", ""), *(cell(run) for cell in columns.values())]) + " |")
    return "\n".join(lines)


@dataclass
class ArmRuns:
    """An arm's fine-tuning runs, one per seed (compare.seeds), read together."""

    name: str
    runs: list[RunFiles]

    def mean(self, key: str) -> float:
        return sum(r.metrics[key] for r in self.runs) / len(self.runs)

    @property
    def correct(self) -> np.ndarray | None:
        """(seeds, reviews) correctness, or None unless every seed left predictions.json for the same reviews."""
        if any(r.correct is None for r in self.runs) or len({tuple(r.predictions["label"]) for r in self.runs}) > 1:
            return None
        return np.stack([r.correct for r in self.runs])


def arms(runs: list[RunFiles]) -> dict[str, ArmRuns]:
    """The fine-tuning runs grouped by arm, in their order (a run without an arm, from an older compare, is its own)."""
    grouped: dict[str, ArmRuns] = {}
    for run in runs:
        name = run.info.get("arm") or run.name
        grouped.setdefault(name, ArmRuns(name, [])).runs.append(run)
    return grouped


def interval_table(by_arm: dict[str, ArmRuns]) -> str:
    """Each arm's held-out accuracy (the mean over its seeds) with its 95% bootstrap interval over the held-out
    reviews and the seeds, and with several seeds the t interval over the seeds alone."""
    header = ["arm", "model", "seeds", "held-out reviews", "held-out acc", "95% from", "95% to", "over seeds alone (t)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in by_arm.values():
        correct = arm.correct
        if correct is None:
            continue
        acc = bootstrap_accuracy(correct)
        seeds = "n/a (one seed)"
        if len(correct) > 1:
            spread = t_interval(correct.mean(1))  # each seed's accuracy
            seeds = f"{percent(spread.low)} to {percent(spread.high)}"
        lines.append("| " + " | ".join([f"`{arm.name}`", arm.runs[0].info.get("description", ""), str(len(correct)), count(correct.shape[1]),
                                         percent(acc.mean), percent(acc.low), percent(acc.high), seeds]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def verdict(a: ArmRuns, b: ArmRuns) -> str | None:
    """The paired bootstrap of a - b over the held-out reviews both were tested on (and their seeds), as a clause;
    None when a run of either lacks predictions.json."""
    ca, cb = a.correct, b.correct
    if ca is None or cb is None:
        return None
    if a.runs[0].predictions["label"] != b.runs[0].predictions["label"]:
        return "not on the same held-out reviews, so no paired interval"
    diff = paired_bootstrap(ca, cb)
    found = {"A better": f"`{a.name}` better", "B better": f"`{b.name}` better"}.get(diff.verdict, diff.verdict)
    over = f"{ca.shape[1]:,} reviews" + (f" and {len(ca)} x {len(cb)} seeds" if len(ca) > 1 or len(cb) > 1 else "")
    return f"paired bootstrap over {over}: 95% interval [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] points, **{found}**"


def contrasts(by_arm: dict[str, ArmRuns], held_out: int | None) -> list[str]:
    """One line per pair of arms that both ran: the accuracy gap (of the seeds' means) with its paired-bootstrap
    verdict, and the speed ratio. Arms without per-review predictions get the rule-of-thumb noise instead."""
    keys = ("test/acc", "train/samples_per_sec")
    ready = {name: arm for name, arm in by_arm.items() if all(k in r.metrics for r in arm.runs for k in keys)}
    lines, unpaired, paired_any = [], False, False
    for a, b, what in CONTRASTS:
        if a in ready and b in ready:
            acc_a, acc_b = ready[a].mean("test/acc"), ready[b].mean("test/acc")
            speed = ready[a].mean("train/samples_per_sec") / ready[b].mean("train/samples_per_sec")
            paired = verdict(ready[a], ready[b])
            unpaired, paired_any = unpaired or paired is None, paired_any or paired is not None
            lines.append(f"- {what}: `{a}` {percent(acc_a)} vs `{b}` {percent(acc_b)} held-out "
                         f"({100 * (acc_a - acc_b):+.2f} points{f'; {paired}' if paired else ''}), {speed:.2f}x the training samples/s.")
    if paired_any:
        lines.append(f"- {PAIRED_NOTE}")
    if unpaired and held_out:
        p = sum(arm.mean("test/acc") for arm in ready.values()) / len(ready)
        error = 100 * math.sqrt(p * (1 - p) / held_out)
        lines.append(f"- Without per-review predictions: at {percent(p)} on {held_out:,} held-out reviews an accuracy has a standard error "
                     f"of {error:.1f} points, a gap between two of {math.sqrt(2) * error:.1f}; smaller gaps are noise.")
    return lines


PAIRED_NOTE = (
    f"Each interval is a 95% percentile interval of {RESAMPLES:,} bootstrap draws (seeded: the same files give the same numbers). "
    "A verdict names a side only when its interval excludes 0; the reviews are drawn jointly for both arms (paired), "
    "which is why a gap can be decided that is smaller than either accuracy's own interval."
)


# -- figures -----------------------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def figure(runs: list[RunFiles], tag: str, x: str, title: str, ylabel: str):
    """One line per run of `tag` against the step (x="step") or the seconds since its log opened (x="seconds")."""
    fig, ax = pyplot().subplots(figsize=(7, 4), dpi=100)
    for run in runs:
        points = run.points(tag)
        if points:
            xs = [step if x == "step" else seconds for step, seconds, _ in points]
            ax.plot(xs, [v for _, _, v in points], marker="o" if len(points) < 30 else None, markersize=3, label=run.name)
    ax.set_xlabel("step" if x == "step" else "wall time since the run's log opened (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(runs: list[RunFiles]) -> dict[str, tuple[object, str]]:
    """file name -> (figure, caption), for the parts and series that have points."""
    made = {}
    for part in PARTS:
        members = [r for r in runs if r.info["part"] == part]
        if any(r.points("train/loss") for r in members):
            made[f"compare_{part}_loss.png"] = (figure(members, "train/loss", "step", f"{part}: training loss", "train/loss"), "training loss")
        if any(r.points("val/acc") for r in members):
            made[f"compare_{part}_accuracy.png"] = (figure(members, "val/acc", "seconds", f"{part}: held-out accuracy", "val/acc"), "held-out accuracy vs wall time")
    pretraining = [r for r in runs if r.info["part"] == "pretraining"]
    if any(r.points("train/loss") for r in pretraining):
        made["compare_pretraining_loss.png"] = (figure(pretraining, "train/loss", "step", "pretraining loss", "train/loss"), "pretraining loss")
    return made


# -- markdown ----------------------------------------------------------------------------------------------------


def shown(path: Path | str) -> str:
    """A path relative to the project when it is inside it: the report should not carry one machine's layout."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def header(manifest: dict, folder: Path, regenerated_by: str | None) -> list[str]:
    m = manifest["machine"]
    gpu = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    lines = [
        f"Generated by `{manifest['command']}` on {manifest['date']}, into `{shown(folder)}`.  ",
        f"Machine: CPU {m['cpu']}{f' ({kind})' if (kind := m.get('cpu_kind')) else ''} ({m.get('cores', m.get('cpu_count'))} cores), {gpu}, "
        f"{m['threads']} torch threads, torch {m['torch']}, Python {m['python']}{f'; precision {p}' if (p := m.get('precision')) else ''}.",
    ]
    if regenerated_by:
        lines[-1] += "  "
        lines.append(f"Report re-generated from those files by `{regenerated_by}` on {datetime.now().astimezone().isoformat(timespec='seconds')}.")
    return lines


def budget_text(b: dict) -> str:
    sizes = lambda n, what: f"{n:,} {what}" if n is not None else f"all {what}"  # noqa: E731
    return (f"Every fine-tuning arm: {sizes(b['train_size'], 'training reviews')}, {sizes(b['val_size'], 'held-out reviews')}, "
            f"batch {b['batch_size']}, lr {b['lr']:g} (warmup {b['warmup_ratio']:g}), {b['epochs']} epoch(s), max_length {b['max_length']}, "
            f"{seed_text(b.get('seeds') or [b['seed']])}, validated every {b['val_check_interval']:g} epoch.")


def seed_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


NOTES = (
    "Held-out acc and F1: the best checkpoint (by val/acc) tested on the held-out reviews. Train samples/s and tokens/s "
    "(non-pad) count training only; train time sums the epochs without validation; wall time is the whole process "
    "(loading, validation, test). Peak memory: allocated CUDA memory on a GPU, else the process's peak resident set. "
    "The plots read each run's TensorBoard events; their time axis starts when the run's log opened (weights loaded)."
)


def markdown(manifest: dict, runs: list[RunFiles], folder: Path, images: dict[str, str], regenerated_by: str | None) -> str:
    lines = header(manifest, folder, regenerated_by)
    lines += ["", "# BERT vs GPT on IMDB sentiment, one budget", "", budget_text(manifest["budget"]), "", NOTES]
    for part, title in PARTS.items():
        members = [r for r in runs if r.info["part"] == part]
        if not members:
            continue
        lines += ["", f"## {title}", ""]
        pretraining = [r for r in runs if r.info["part"] == "pretraining"] if part == "controlled" else []
        if pretraining:
            b = manifest["budget"]
            docs = f"the same {b['pretrain_docs']:,} documents" if b["pretrain_docs"] is not None else "all the same documents"
            lines += ["### Pretraining", "", f"From random init, {b['pretrain_steps']:,} steps each on {docs}.", "",
                      table(pretraining, PRETRAIN_COLUMNS), ""]
            lines += [f"![{images[name]}]({name})" for name in images if name == "compare_pretraining_loss.png"]
            lines += ["", "### Fine-tuning", ""]
        lines += [table(members, FINETUNE_COLUMNS), ""]
        lines += [f"![{images[name]}]({name})" for name in images if name.startswith(f"compare_{part}_")]
    by_arm = arms([r for r in runs if r.info["part"] != "pretraining"])
    intervals = interval_table(by_arm)
    if intervals:
        lines += ["", "## Held-out accuracy with 95% intervals", "",
                  "Bootstrap over the held-out reviews (each run's `predictions.json`) and, for an arm run with several seeds, "
                  "over its seeds: how far another draw of as many reviews (and seeds) could move the figure. With one seed, "
                  "the seed's own noise is not in it.", "", intervals]
    summary = contrasts(by_arm, manifest["budget"]["val_size"])
    if summary:
        lines += ["", "## In short", "", *summary]
    lines += ["", "## Runs", "", "Each run's folder holds its config (`.hydra/`), `output.log`, `metrics.json` and TensorBoard events.", ""]
    for r in runs:
        precision = f"{r.info['precision']}, " if r.info.get("precision") else ""
        lines.append(f"- `{r.name}` ({precision}{number(r.info.get('wall_s'))} s): `{r.info['command']}`")
    return "\n".join(lines) + "\n"


# -- writing -----------------------------------------------------------------------------------------------------


def write_summary(folder: Path, text: str, made: dict) -> Path:
    """The tables and figures as a TensorBoard run `<compare dir>/summary`, replacing an older one."""
    from torch.utils.tensorboard import SummaryWriter

    tmp = folder / "summary.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(tmp))
    writer.add_text("compare/report", text)
    for name, (fig, _) in made.items():
        writer.add_figure(f"compare/{Path(name).stem.removeprefix('compare_')}", fig, close=False)
    writer.close()
    return tmp


def write_report(folder: Path, report_dir: Path, regenerated_by: str | None = None) -> Path:
    """Writes `report_dir/compare.md`, its PNGs and `folder/summary`; returns the report's path."""
    folder = Path(folder)
    manifest, runs = read_compare(folder)
    report_dir.mkdir(parents=True, exist_ok=True)
    made = figures(runs)
    text = markdown(manifest, runs, folder, {name: caption for name, (_, caption) in made.items()}, regenerated_by)
    staged = []  # (temporary, final) pairs, renamed only once everything is written
    try:
        for name, (fig, _) in made.items():
            tmp = report_dir / f".{name}.tmp"
            fig.savefig(tmp, format="png")
            staged.append((tmp, report_dir / name))
        tmp = report_dir / f".{REPORT}.tmp"
        tmp.write_text(text)
        staged.append((tmp, report_dir / REPORT))
        staged.append((write_summary(folder, text, made), folder / "summary"))
    except BaseException:
        for tmp, _ in staged:
            if tmp.is_file():
                tmp.unlink()
        shutil.rmtree(folder / "summary.tmp", ignore_errors=True)
        raise
    finally:
        for fig, _ in made.values():
            pyplot().close(fig)
    for stale in report_dir.glob("compare_*.png"):  # plots of parts this report no longer has
        if stale.name not in made:
            stale.unlink()
    shutil.rmtree(folder / "summary", ignore_errors=True)
    for tmp, final in staged:
        os.replace(tmp, final)
    return report_dir / REPORT

