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
from bertgpt.cli import clock
from bertgpt.errors import UserError
from bertgpt.experiments.stats import (
    RESAMPLES,
    bootstrap_accuracy,
    paired_bootstrap,
    t_interval,
)

REPORT = "compare.md"
PARTS = {
    "practical": "Practical: the bundled weights fine-tuned",
    "direction": "Attention direction, isolated: our BERT on the bundled weights, bidirectional vs causal mask",
    "probes": "Frozen representations: a linear probe on every layer",
    "prompting": "No fine-tuning: the decoder prompted, our MLM BERT asked a cloze",
    "controlled": "Controlled: our BERT vs our GPT, one size and tokenizer, pretrained the same way",
}
ITEMS = {"sentiment": "reviews", "pos": "words"}


@dataclass
class RunFiles:
    """What one run left behind: metrics.json, its scalar series from TensorBoard, and compare.json's record."""

    name: str
    info: dict
    metrics: dict
    series: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)  # tag -> (step, seconds, value)
    predictions: dict | None = None  # predictions.json: "label" and "prediction" per held-out item, in order
    probes: dict | None = None  # probes.json of a probe run: accuracy per layer and pooling

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


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(folder: Path, name: str, info: dict) -> RunFiles:
    metrics_file = folder / name / "metrics.json"
    layers, width = saved_config(folder / name, "model.n_layer"), saved_config(folder / name, "model.n_embd")  # pretraining's size
    info = {**info, "weights": weights(folder, folder / name), "size": f"{layers} x {width}" if layers and width else "",
            "max_steps": saved_config(folder / name, "trainer.max_steps")}
    return RunFiles(name, info, json.loads(metrics_file.read_text()), read_events(folder / name),
                    read_json(folder / name / "predictions.json"), read_json(folder / name / "probes.json"))


def read_compare(folder: Path) -> tuple[dict, list[RunFiles], list[str]]:
    """The manifest, the runs that finished (their metrics.json is there) and the names of those that did not."""
    manifest_file = folder / "compare.json"
    if not manifest_file.is_file():
        raise UserError(f"report_only={folder}: not a compare folder (no compare.json). Compares are under logs/compare/.")
    manifest = json.loads(manifest_file.read_text())
    done = [name for name in manifest["runs"] if (folder / name / "metrics.json").is_file()]
    if not done:
        raise UserError(f"{folder}: no run of this compare has finished yet (none has a metrics.json): nothing to report.")
    return manifest, [read_run(folder, name, manifest["runs"][name]) for name in done], [n for n in manifest["runs"] if n not in done]


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


TARGETS = (0.80, 0.85, 0.88, 0.90)  # the held-out accuracies whose first crossing the time-to-accuracy table gives


def time_to(run: RunFiles, target: float) -> float | None:
    """Seconds from the start of training to the first validation at or above `target` (None: no validation got
    there). The clock is the TensorBoard log's, so it counts the validation passes and checkpoints on the way."""
    return next((seconds for _, seconds, acc in run.points("val/acc") if acc >= target), None)


def time_to_table(runs: list[RunFiles]) -> str:
    """Wall time to each of TARGETS for the runs that validated during training (compare.validate=true)."""
    validated = [r for r in runs if r.points("val/acc")]
    header = ["run", "model", "trained on", "validations", "best val acc", *(f"to {100 * t:g}% (s)" for t in TARGETS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in validated:
        accs = [acc for _, _, acc in r.points("val/acc")]
        size = r.info.get("train_size")
        reached = [time_to(r, t) for t in TARGETS]
        lines.append("| " + " | ".join([f"`{r.name}`", r.info.get("description", ""), "all" if size is None else f"{size:,}", str(len(accs)),
                                         percent(max(accs)), *("not reached" if s is None else number(s) for s in reached)]) + " |")
    return "\n".join(lines) if validated else ""


def steps(run: RunFiles) -> float | None:
    """Optimizer steps a pretraining run took: its own count if it writes one, else its budget (a run that wrote
    metrics.json finished it), else the last step it logged."""
    for key in ("train/steps", "trainer/global_step", "global_step", "step"):
        if key in run.metrics:
            return run.metrics[key]
    if str(run.info.get("max_steps", "")).isdigit():
        return int(run.info["max_steps"])
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
# Pairs worth a sentence when both ran: (a, b, what a - b measures). The learning curve's pairs (the two families
# at each training size) are added by `pairs`.
CONTRASTS = [
    ("bert_scratch", "bert", "ours vs the library, BERT (the same weights)"),
    ("gpt_scratch", "gpt", "ours vs the library, decoder (the same weights)"),
    ("bert_bi_cls", "bert_causal_last", "what seeing the right context buys sentiment, each mask at its natural pooling ([CLS] vs the last token)"),
    ("bert_bi_mean", "bert_causal_mean", "what seeing the right context buys sentiment, both mean-pooled"),
    ("bert_bi_last", "bert_causal_last", "what seeing the right context buys sentiment, both from the last token"),
    ("bert_bi_cls", "bert_causal_cls", "[CLS] with and without the right context (under the causal mask it sees only itself)"),
    ("pos_bert_bi", "pos_bert_causal", "what seeing the right context buys POS tagging"),
    ("bert_bi_mean", "bert_bi_cls", "pooling under the bidirectional mask: mean vs [CLS]"),
    ("bert_causal_mean", "bert_causal_last", "pooling under the causal mask: mean vs the last token"),
    ("probe_gpt", "probe_bert", "frozen features, each model's layer and pooling chosen on its training data: decoder vs BERT, sentiment"),
    ("probe_gpt_pos", "probe_bert_pos", "frozen features, each model's layer chosen on its training data: decoder vs BERT, POS"),
    ("gpt_kshot", "gpt_zeroshot", "what in-context demonstrations buy the prompted decoder"),
    ("pos_gpt", "pos_bert", "decoder vs BERT, POS, bundled weights"),
    ("bert_mlm", "bert_random", "what MLM pretraining buys our BERT"),
    ("gpt_clm", "gpt_random", "what CLM pretraining buys our GPT"),
    ("gpt_clm", "bert_mlm", "GPT vs BERT, same size, tokenizer and pretraining budget"),
    ("pos_bert_mlm", "pos_bert_random", "what MLM pretraining buys our BERT, POS"),
    ("pos_gpt_clm", "pos_gpt_random", "what CLM pretraining buys our GPT, POS"),
    ("pos_gpt_clm", "pos_bert_mlm", "GPT vs BERT, same size, tokenizer and pretraining budget, POS"),
]


def table(runs: list[RunFiles], columns: dict) -> str:
    header = ["run", "model", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        lines.append("| " + " | ".join([f"`{run.name}`", run.info.get("description", ""), *(cell(run) for cell in columns.values())]) + " |")
    return "\n".join(lines)


@dataclass
class ArmRuns:
    """An arm's runs, one per seed (compare.seeds), read together."""

    name: str
    runs: list[RunFiles]

    def mean(self, key: str) -> float:
        return sum(r.metrics[key] for r in self.runs) / len(self.runs)

    @property
    def info(self) -> dict:
        return self.runs[0].info

    @property
    def correct(self) -> np.ndarray | None:
        """(seeds, items) correctness, or None unless every seed left predictions.json for the same items."""
        if any(r.correct is None for r in self.runs) or len({tuple(r.predictions["label"]) for r in self.runs}) > 1:
            return None
        return np.stack([r.correct for r in self.runs])

    @property
    def groups(self) -> list[int] | None:
        """The words of each test sentence (POS), drawn together by the bootstraps; None for reviews."""
        return self.runs[0].predictions.get("words") if self.runs[0].predictions else None

    @property
    def accuracy(self):
        """The mean accuracy with its 95% bootstrap interval over items, or sentences (and seeds); None without predictions."""
        correct = self.correct
        return None if correct is None else bootstrap_accuracy(correct, groups=self.groups)


def arms(runs: list[RunFiles]) -> dict[str, ArmRuns]:
    """The runs grouped by arm, in their order (a run without an arm, from an older compare, is its own)."""
    grouped: dict[str, ArmRuns] = {}
    for run in runs:
        name = run.info.get("arm") or run.name
        grouped.setdefault(name, ArmRuns(name, [])).runs.append(run)
    return grouped


def trained_on(arm: ArmRuns) -> str:
    """How many labelled items an arm learnt from: fine-tuning or probe data, a prompt's demonstrations, or none."""
    info = arm.info
    if info.get("script") == "prompt":
        shots = arm.runs[0].metrics.get("prompt/shots", 0)
        return f"{int(shots)} in the prompt" if shots else "0 (zero-shot)"
    size, unit = info.get("train_size"), "sentences" if info.get("task") == "pos" else "reviews"
    return f"all {unit}" if size is None else f"{size:,} {unit}"


def interval_table(by_arm: dict[str, ArmRuns]) -> str:
    """Each arm's held-out accuracy (the mean over its seeds) with its 95% bootstrap interval over the held-out
    items and the seeds, and with several seeds the t interval over the seeds alone."""
    header = ["arm", "model", "task", "trained on", "seeds", "held-out items", "held-out acc", "95% from", "95% to", "over seeds alone (t)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in by_arm.values():
        correct = arm.correct
        if correct is None:
            continue
        acc = arm.accuracy
        seeds = "n/a (one seed)"
        if len(correct) > 1:
            spread = t_interval(correct.mean(1))  # each seed's accuracy
            seeds = f"{percent(spread.low)} to {percent(spread.high)}"
        task = arm.info.get("task", "sentiment")
        lines.append("| " + " | ".join([f"`{arm.name}`", arm.info.get("description", ""), task, trained_on(arm), str(len(correct)),
                                         f"{correct.shape[1]:,} {ITEMS.get(task, 'items')}", percent(acc.mean), percent(acc.low),
                                         percent(acc.high), seeds]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def verdict(a: ArmRuns, b: ArmRuns) -> str | None:
    """The paired bootstrap of a - b over the held-out items both were tested on (and their seeds), as a clause;
    None when a run of either lacks predictions.json."""
    ca, cb = a.correct, b.correct
    if ca is None or cb is None:
        return None
    if a.runs[0].predictions["label"] != b.runs[0].predictions["label"]:
        return "not on the same held-out items, so no paired interval"
    diff = paired_bootstrap(ca, cb, groups=a.groups)
    found = {"A better": f"`{a.name}` better", "B better": f"`{b.name}` better"}.get(diff.verdict, diff.verdict)
    items = ITEMS.get(a.info.get("task", "sentiment"), "items")
    over = f"{ca.shape[1]:,} {items}" + (f" in {len(a.groups):,} sentences" if a.groups else "") + \
        (f" and {len(ca)} x {len(cb)} seeds" if len(ca) > 1 or len(cb) > 1 else "")
    return f"paired bootstrap over {over}: 95% interval [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] points, **{found}**"


def curve_arms(by_arm: dict[str, ArmRuns], kind: str) -> list[ArmRuns]:
    """The fine-tuned arms of one kind (bert, gpt) at each training size, smallest first."""
    found = [a for a in by_arm.values() if a.info.get("kind") == kind and a.info.get("script", "train") == "train"]
    return sorted(found, key=lambda a: math.inf if a.info.get("train_size") is None else a.info["train_size"])


def pairs(by_arm: dict[str, ArmRuns]) -> list[tuple[str, str, str]]:
    """The pairs worth a sentence: the two families at each training size both ran, the prompted decoder against
    the least-trained BERT, then CONTRASTS."""
    found = []
    bert = {a.info.get("train_size"): a for a in curve_arms(by_arm, "bert")}
    for gpt in curve_arms(by_arm, "gpt"):
        size = gpt.info.get("train_size")
        if size in bert:
            found.append((gpt.name, bert[size].name, f"decoder vs BERT, bundled weights, both fine-tuned on {'all' if size is None else f'{size:,}'} reviews"))
    if bert and "gpt_zeroshot" in by_arm:
        least = min(bert.values(), key=lambda a: a.info.get("train_size") or math.inf)
        found.append(("gpt_zeroshot", least.name, f"the decoder zero-shot vs BERT fine-tuned on {least.info.get('train_size'):,} reviews"))
    for arm in by_arm.values():
        if arm.info.get("kind") == "gpt_kshot" and arm.name != "gpt_kshot" and "gpt_zeroshot" in by_arm:  # gpt_kshot itself: CONTRASTS
            shots = int(arm.runs[0].metrics.get("prompt/shots", 0))
            found.append((arm.name, "gpt_zeroshot", f"what {shots} in-context demonstration{'s buy' if shots != 1 else ' buys'} the prompted decoder"))
    for (task, objective), points in trend(by_arm).items():
        for step, arm in points.items():
            if step and 0 in points and arm.name.endswith(f"_step{step}"):  # the final export's pairs are in CONTRASTS
                found.append((arm.name, points[0].name, f"what {step:,} steps of {objective.upper()} pretraining buy our "
                              f"{'BERT' if objective == 'mlm' else 'GPT'}{', POS' if task == 'pos' else ''}"))
    for (task, objective), points in trend(by_arm).items():
        if objective == "clm":
            for step, arm in points.items():
                bert = trend(by_arm).get((task, "mlm"), {}).get(step)
                if step and bert and arm.name.endswith(f"_step{step}"):
                    found.append((arm.name, bert.name, f"GPT vs BERT after {step:,} pretraining steps each{', POS' if task == 'pos' else ''}"))
    return found + [(a, b, what) for a, b, what in CONTRASTS if a in by_arm and b in by_arm]


def trend(by_arm: dict[str, ArmRuns]) -> dict[tuple[str, str], dict[int, ArmRuns]]:
    """The controlled fine-tunes by (task, objective), keyed by the pretraining steps they started from (0: the
    random-init control), fewest first."""
    found: dict[tuple[str, str], dict[int, ArmRuns]] = {}
    for arm in by_arm.values():
        info = arm.info
        if info.get("part") == "controlled" and info.get("script", "train") == "train" and info.get("pretrain_step") is not None:
            found.setdefault((info.get("task", "sentiment"), info["objective"]), {})[info["pretrain_step"]] = arm
    return {key: dict(sorted(points.items())) for key, points in sorted(found.items())}


def trend_table(by_arm: dict[str, ArmRuns]) -> list[str]:
    """Fine-tuned accuracy at each pretraining checkpoint against the random-init control (paired), and for each
    task and objective the fewest steps that beat the control by more than the noise."""
    lines = ["| task | pretraining | steps | arm | held-out acc | 95% interval | vs random init (paired, 95%) |", "|---|---|---|---|---|---|---|"]
    found = []
    for (task, objective), points in trend(by_arm).items():
        control, first = points.get(0), None
        for step, arm in points.items():
            acc = arm.accuracy
            if acc is None:
                continue
            gap = "the control" if step == 0 else "n/a"
            if step and control is not None and control.correct is not None:
                diff = paired_bootstrap(arm.correct, control.correct, groups=arm.groups)
                gap = f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}], {diff.verdict.replace('A better', 'pretrained better').replace('B better', 'random init better')}"
                if diff.verdict == "A better" and first is None:
                    first = step
            lines.append(f"| {task} | {PRETRAINED[objective]} | {step:,} | `{arm.name}` | {percent(acc.mean)} | {percent(acc.low)} to {percent(acc.high)} | {gap} |")
        if control is not None and len(points) > 1:
            steps = max(points)
            found.append(f"- {task}, {PRETRAINED[objective]}: " + (f"beats its random-init control from **{first:,} steps** on (the fewest measured)."
                         if first else f"does not beat its random-init control by more than the noise at any measured step (up to {steps:,})."))
    return [*lines, "", *found] if len(lines) > 2 else []


PRETRAINED = {"mlm": "MLM (our BERT)", "clm": "CLM (our GPT)"}


def contrasts(by_arm: dict[str, ArmRuns], held_out: int | None) -> list[str]:
    """One line per pair of arms that both ran: the accuracy gap (of the seeds' means) with its paired-bootstrap
    verdict, and the training speed ratio where both trained. Arms without per-item predictions get the
    rule-of-thumb noise instead."""
    ready = {name: arm for name, arm in by_arm.items() if all("test/acc" in r.metrics for r in arm.runs)}
    lines, unpaired, paired_any = [], False, False
    for a, b, what in pairs(ready):
        acc_a, acc_b = ready[a].mean("test/acc"), ready[b].mean("test/acc")
        paired = verdict(ready[a], ready[b])
        unpaired, paired_any = unpaired or paired is None, paired_any or paired is not None
        speed = ""
        if all("train/samples_per_sec" in r.metrics for arm in (ready[a], ready[b]) for r in arm.runs):
            speed = f", {ready[a].mean('train/samples_per_sec') / ready[b].mean('train/samples_per_sec'):.2f}x the training samples/s"
        lines.append(f"- {what}: `{a}` {percent(acc_a)} vs `{b}` {percent(acc_b)} held-out "
                     f"({100 * (acc_a - acc_b):+.2f} points{f'; {paired}' if paired else ''}){speed}.")
    if paired_any:
        lines.append(f"- {PAIRED_NOTE}")
    if unpaired and held_out:
        p = sum(arm.mean("test/acc") for arm in ready.values()) / len(ready)
        error = 100 * math.sqrt(p * (1 - p) / held_out)
        lines.append(f"- Without per-item predictions: at {percent(p)} on {held_out:,} held-out reviews an accuracy has a standard error "
                     f"of {error:.1f} points, a gap between two of {math.sqrt(2) * error:.1f}; smaller gaps are noise.")
    return lines


PAIRED_NOTE = (
    f"Each interval is a 95% percentile interval of {RESAMPLES:,} bootstrap draws (seeded: the same files give the same numbers). "
    "A verdict names a side only when its interval excludes 0; the items are drawn jointly for both arms (paired), "
    "which is why a gap can be decided that is smaller than either accuracy's own interval. POS items are words, "
    "resampled sentence by sentence (the words of one sentence share its difficulty: drawn one by one, their intervals would be too narrow)."
)


# -- figures -----------------------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def label_panel(ax, xlabel: str, ylabel: str, title: str, **legend) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **legend)


def with_intervals(ax, xs: list, accs: list, **style) -> None:
    """Accuracies (stats intervals) at xs, in percent, with their 95% intervals as error bars."""
    ax.errorbar(xs, [100 * a.mean for a in accs], yerr=[[100 * (a.mean - a.low) for a in accs], [100 * (a.high - a.mean) for a in accs]],
                capsize=3, markersize=5, **style)


def figure(runs: list[RunFiles], tag: str, x: str, title: str, ylabel: str):
    """One line per run of `tag` against the step (x="step") or the seconds since its log opened (x="seconds")."""
    fig, ax = pyplot().subplots(figsize=(7, 4), dpi=100)
    for run in runs:
        points = run.points(tag)
        if points:
            xs = [step if x == "step" else seconds for step, seconds, _ in points]
            ax.plot(xs, [v for _, _, v in points], marker="o" if len(points) < 30 else None, markersize=3, label=run.name)
    label_panel(ax, "step" if x == "step" else "wall time since the run's log opened (s)", ylabel, title)
    fig.tight_layout()
    return fig


def curve_figure(by_arm: dict[str, ArmRuns]):
    """The headline: held-out accuracy against the labelled reviews each approach learnt from, with 95% intervals.
    None when no arm of the curve has predictions."""
    series = [("library BERT, fine-tuned", curve_arms(by_arm, "bert"), "o-", "tab:blue"),
              ("library decoder, fine-tuned", curve_arms(by_arm, "gpt"), "s-", "tab:red")]
    prompted = [a for a in by_arm.values() if a.info.get("script") == "prompt" and a.info.get("kind", "").startswith("gpt")]
    probes = {kind: [a for a in by_arm.values() if a.info.get("kind") == kind] for kind in ("probe_bert", "probe_gpt")}
    series += [("library decoder, prompted (k labelled reviews in the prompt)", prompted, "D", "darkred"),
               ("linear probe on frozen BERT (chosen layer)", probes["probe_bert"], "^", "tab:cyan"),
               ("linear probe on frozen decoder (chosen layer)", probes["probe_gpt"], "v", "tab:orange"),
               ("our MLM BERT, cloze", [a for a in by_arm.values() if a.info.get("kind") == "bert_mlm_cloze"], "P", "tab:green")]
    drawn = []
    for label, members, style, color in series:
        points = []
        for arm in members:
            acc = arm.accuracy
            if acc is None:
                continue
            size = arm.info.get("train_size")
            x = arm.runs[0].metrics.get("prompt/shots", 0) if arm.info.get("script") == "prompt" else size
            points.append((x, acc))
        if points:
            drawn.append((label, sorted(points, key=lambda p: p[0]), style, color))
    if not drawn or all(x is None for _, points, _, _ in drawn for x, _ in points):
        return None
    fig, ax = pyplot().subplots(figsize=(8, 5), dpi=100)
    for label, points, style, color in drawn:
        xs = [x for x, _ in points if x is not None]
        accs = [a for x, a in points if x is not None]
        with_intervals(ax, xs, accs, fmt=style, color=color, label=label)
    ax.set_xscale("symlog", linthresh=10)  # 0 (zero-shot) and a few demonstrations on one axis with thousands
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    label_panel(ax, "labelled reviews learnt from (0: zero-shot)", "held-out accuracy (%), 95% interval", "IMDB sentiment: accuracy against labelled data",
                loc="lower right")
    fig.tight_layout()
    return fig


def trend_figure(by_arm: dict[str, ArmRuns]):
    """Fine-tuned held-out accuracy against the pretraining steps the weights had (0: random init), one panel per
    task, a line per objective; None with fewer than two points."""
    lines = {key: [(step, arm.accuracy) for step, arm in points.items() if arm.accuracy is not None] for key, points in trend(by_arm).items()}
    lines = {key: points for key, points in lines.items() if len(points) > 1}
    if not lines:
        return None
    tasks = [t for t in ITEMS if any(task == t for task, _ in lines)]
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(6 * len(tasks), 4), dpi=100, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, objective), points in lines.items():
            if t != task:
                continue
            xs, accs = [x for x, _ in points], [a for _, a in points]
            with_intervals(ax, xs, accs, fmt="o-" if objective == "mlm" else "s-", color="tab:blue" if objective == "mlm" else "tab:red",
                           label=f"{PRETRAINED[objective]}, fine-tuned")
        label_panel(ax, "pretraining steps before fine-tuning (0: random init)", "held-out accuracy (%), 95% interval",
                    f"{task}: fine-tuned accuracy over pretraining")
    fig.tight_layout()
    return fig


def probe_figure(runs: list[RunFiles]):
    """Probe accuracy per layer (as a fraction of the model's depth), one panel per task, a line per model and pooling."""
    probed = [r for r in runs if r.probes]
    if not probed:
        return None
    tasks = [t for t in ITEMS if any(r.probes.get("task") == t for r in probed)]
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(6 * len(tasks), 4), dpi=100, squeeze=False)
    styles = {"first": "-", "mean": "--", "last": ":", "word": "-"}
    for ax, task in zip(axes[0], tasks):
        for run in (r for r in probed if r.probes.get("task") == task):
            p = run.probes
            depth = [layer / max(p["n_layers"], 1) for layer in p["layers"]]
            color = "tab:red" if run.info.get("kind", "").startswith("probe_gpt") else "tab:blue"
            for pooling, accs in p["accuracy"].items():
                ax.plot(depth, [100 * a for a in accs], styles.get(pooling, "-"), color=color, marker="o", markersize=3,
                        label=f"{run.info.get('description', run.name)}: {pooling}")
        label_panel(ax, "layer / number of layers (0: the embeddings)", "probe accuracy on held-out items (%)", f"{task}: linear probe per layer")
    fig.tight_layout()
    return fig


def figures(runs: list[RunFiles]) -> dict[str, tuple[object, str]]:
    """file name -> (figure, caption), for the parts and series that have points."""
    made = {}
    by_arm = arms([r for r in runs if r.info["part"] != "pretraining"])
    curve = curve_figure(by_arm)
    if curve is not None:
        made["compare_curve.png"] = (curve, "held-out accuracy against labelled reviews, every approach")
    pretraining_trend = trend_figure(by_arm)
    if pretraining_trend is not None:
        made["compare_trend.png"] = (pretraining_trend, "fine-tuned accuracy over pretraining steps")
    probes = probe_figure(runs)
    if probes is not None:
        made["compare_probes.png"] = (probes, "linear probe accuracy per layer")
    for part in PARTS:
        members = [r for r in runs if r.info["part"] == part and r.points("train/loss")]
        first_seeds = [arm.runs[0] for arm in arms(members).values()]  # one line per arm: the legend stays readable
        if first_seeds:
            made[f"compare_{part}_loss.png"] = (figure(first_seeds, "train/loss", "step", f"{part}: training loss (first seed)", "train/loss"), "training loss")
        if any(r.points("val/acc") for r in first_seeds):
            made[f"compare_{part}_accuracy.png"] = (figure(first_seeds, "val/acc", "seconds", f"{part}: held-out accuracy", "val/acc"),
                                                    "held-out accuracy vs wall time")
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
    flags = f"; CPU flags {' '.join(m['cpu_flags'])}" if m.get("cpu_flags") else ""
    precisions = ", ".join(sorted({r["precision"] for r in manifest["runs"].values() if r.get("precision")}))
    lines = [
        f"Generated by `{manifest['command']}` on {manifest['date']}, into `{shown(folder)}`.  ",
        f"Machine: CPU {m['cpu']}{f' ({kind})' if (kind := m.get('cpu_kind')) else ''} ({m.get('cores', m.get('cpu_count'))} cores{flags}), {gpu}, "
        f"{m['threads']} torch threads, torch {m['torch']}, Python {m['python']}"
        f"{f'; fine-tuning precision {precisions}' if precisions else ''}.",
    ]
    finished = sorted(r["finished"] for r in manifest["runs"].values() if r.get("finished"))
    if finished:
        total = sum(r.get("wall_s") or 0 for r in manifest["runs"].values())
        lines[-1] += "  "
        lines.append(f"Its runs finished between {finished[0]} and {finished[-1]}; their wall times add up to {clock(total)}.")
    if regenerated_by:
        lines[-1] += "  "
        lines.append(f"Report re-generated from those files by `{regenerated_by}` on {datetime.now().astimezone().isoformat(timespec='seconds')}.")
    return lines


def size_text(n, what: str) -> str:
    return f"{n:,} {what}" if n is not None else f"all {what}"


def same_items(n, what: str) -> str:
    return f"the same {n:,} {what}" if n is not None else f"all the {what}"


def budget_text(b: dict) -> str:
    if "scale" not in b:  # a compare from before the scales
        return (f"Every fine-tuning arm: {size_text(b['train_size'], 'training reviews')}, {size_text(b['val_size'], 'held-out reviews')}, "
                f"batch {b['batch_size']}, lr {b['lr']:g} (warmup {b['warmup_ratio']:g}), {b['epochs']} epoch(s), max_length {b['max_length']}, "
                f"{seed_text(b.get('seeds') or [b['seed']])}.")
    pos = b.get("pos") or {}
    curve = f"the learning curve also on {', '.join(f'{n:,}' for n in b['curve_sizes'])}; " if b["curve_sizes"] else ""
    validation = f"validated every {b['val_check_interval']:g} epoch, the best checkpoint tested" if b.get("validate") else \
        "no validation pass: each fine-tune is tested as it ends (nothing is picked on the held-out reviews)"
    return (f"Scale `{b['scale']}`. Sentiment: every arm is tested on {same_items(b['val_size'], 'held-out reviews')} (the 9:1 split at "
            f"random_state 2024); fine-tunes train on {size_text(b['train_size'], 'reviews')} ({curve}"
            f"the decoder on {', '.join(size_text(n, '') .strip() for n in b['decoder_sizes'])}; "
            f"the attention-direction arms on {size_text(b['direction_train_size'], 'reviews')}), probes on {size_text(b['probe_train_size'], 'reviews')}. "
            f"POS: {size_text(pos.get('train_size'), 'training sentences')}, tested on {same_items(pos.get('test_size'), 'sentences')}. "
            f"Batch {b['batch_size']}, lr {b['lr']:g}{f' (the controlled arms {lr:g})' if (lr := b.get('controlled_lr')) else ''} (warmup {b['warmup_ratio']:g}), {b['epochs']} epoch(s) (a curve point of n reviews: at least "
            f"{b['curve_min_samples']:,} samples' worth of epochs), max_length {b['max_length']}, {validation}. {seed_text(b['seeds'])} for every "
            f"seeded arm, the 135M decoder's fine-tunes the first {b['decoder_seeds']} of them; probes and zero-shot prompts are deterministic (one run). "
            f"k-shot: {' or '.join(map(str, b['shots'] if isinstance(b['shots'], list) else [b['shots']]))} demonstrations of at most {b['demo_tokens']} tokens.")


def seed_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


NOTES = (
    "Held-out acc and F1: each fine-tune tested on the held-out items. Train samples/s and tokens/s "
    "(non-pad) count training only; train time sums the epochs; wall time is the whole process "
    "(loading, tokenizing, training, test). Peak memory: allocated CUDA memory on a GPU, else the process's peak resident set."
)


def probe_table(runs: list[RunFiles]) -> str:
    """The chosen probe of each run (by its accuracy on training items it was not fitted on; a run from before
    2026-12-05 chose on the test split, so its two accuracy columns agree) and the test curve's maximum, which that
    choice would have read."""
    lines = ["| run | model | task | layers | trained on | chosen layer | pooling | held-out acc | the test curve's max | max at | feature time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r.probes
        if not p:
            continue
        best, top = p["best"], p.get("test_max", p["best"])
        lines.append(f"| `{r.name}` | {r.info.get('description', '')} | {p['task']} | {p['n_layers']} | {p['n_train']:,} | {best['layer']} | "
                     f"{best['pooling']} | {percent(best['acc'])} | {percent(top['acc'])} | layer {top['layer']}, {top['pooling']} | "
                     f"{number(p.get('feature_seconds'))} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def prompt_table(runs: list[RunFiles]) -> str:
    lines = ["| run | model | method | shots | held-out acc | F1 | predicted positive | items/s | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r.metrics
        lines.append(f"| `{r.name}` | {r.info.get('description', '')} | {m.get('prompt/method', 'n/a')} | {count(m.get('prompt/shots'))} | "
                     f"{percent(m.get('test/acc'))} | {number(m.get('test/f1'))} | {percent(m.get('prompt/positive_rate'))} | "
                     f"{number(m.get('prompt/samples_per_sec'))} | {number(r.info.get('wall_s'))} |")
    return "\n".join(lines)


def markdown(manifest: dict, runs: list[RunFiles], folder: Path, images: dict[str, str], regenerated_by: str | None,
             unfinished: list[str] | None = None) -> str:
    lines = header(manifest, folder, regenerated_by)
    lines += ["", "# BERT vs GPT, measured", "", budget_text(manifest["budget"]), "", NOTES]
    if unfinished:
        lines += ["", f"**Incomplete:** {len(unfinished)} planned run(s) had not finished when this report was written: "
                      f"{', '.join(f'`{n}`' for n in unfinished)}. Repeat the compare's command to resume them."]
    if "compare_curve.png" in images:
        lines += ["", "## Accuracy against labelled data", "", f"![{images['compare_curve.png']}](compare_curve.png)"]
    for part, title in PARTS.items():
        members = [r for r in runs if r.info["part"] == part]
        if not members:
            continue
        lines += ["", f"## {title}", ""]
        pretraining = [r for r in runs if r.info["part"] == "pretraining"] if part == "controlled" else []
        if pretraining:
            b = manifest["budget"]
            docs = f"the same {b['pretrain_docs']:,} documents" if b["pretrain_docs"] is not None else "all the same documents"
            saved = f", exported also after {', '.join(f'{n:,}' for n in b['pretrain_checkpoints'])} steps" if b.get("pretrain_checkpoints") else ""
            lines += ["### Pretraining", "", f"From random init, {b['pretrain_steps']:,} steps each on {docs}{saved}.", "",
                      table(pretraining, PRETRAIN_COLUMNS), ""]
            lines += [f"![{images[name]}]({name})" for name in images if name == "compare_pretraining_loss.png"]
            lines += ["", "### Fine-tuning", ""]
        trained = [r for r in members if r.info.get("script", "train") == "train"]
        if trained:
            lines += [table(trained, FINETUNE_COLUMNS), ""]
            reached = time_to_table(trained) if manifest["budget"].get("validate") else ""
            if reached:
                lines += ["Time to accuracy: seconds from the first training step to the first validation on the held-out reviews at "
                          "or above each accuracy (validation passes and checkpoint writes included).", "", reached, ""]
        if part == "controlled":
            steps = trend_table(arms(trained))
            if steps:
                lines += ["### Over pretraining", "", "Each checkpoint fine-tuned like the final export; step 0 is the random-init control "
                          "(the same config and tokenizer, no pretrained weights).", "", *steps, ""]
                lines += [f"![{images[name]}]({name})" for name in images if name == "compare_trend.png"]
        if part == "probes":
            lines += [probe_table(members), ""]
            lines += [f"![{images[name]}]({name})" for name in images if name == "compare_probes.png"]
        prompted = [r for r in members if r.info.get("script") == "prompt"]
        if prompted:
            lines += [prompt_table(prompted), ""]
        lines += [f"![{images[name]}]({name})" for name in images if name.startswith(f"compare_{part}_")]
    by_arm = arms([r for r in runs if r.info["part"] != "pretraining"])
    intervals = interval_table(by_arm)
    if intervals:
        lines += ["", "## Held-out accuracy with 95% intervals", "",
                  "Bootstrap over the held-out items (each run's `predictions.json`) and, for an arm run with several seeds, "
                  "over its seeds: how far another draw of as many items (and seeds) could move the figure. With one seed, "
                  "the seed's own noise is not in it.", "", intervals]
    summary = contrasts(by_arm, manifest["budget"]["val_size"])
    if summary:
        lines += ["", "## In short", "", *summary]
    reproduced = reproductions(folder)
    if reproduced:
        lines += ["", "## Re-run with the same command", "", *reproduced]
    lines += ["", "## Runs", "", "Each run's folder holds its config (`.hydra/`), `output.log`, `metrics.json` and, for a fine-tune, TensorBoard events.", ""]
    for r in runs:
        precision = f"{r.info['precision']}, " if r.info.get("precision") else ""
        command = r.info["command"].replace(f"{ROOT}/", "")  # the run folder as the project's, not this machine's
        lines.append(f"- `{r.name}` ({precision}{number(r.info.get('wall_s'))} s): `{command}`")
    return "\n".join(lines) + "\n"


def reproductions(folder: Path) -> list[str]:
    """A line per run of this compare that `src/compare.py reproduce=<run>` ran again: whether what it measured came
    out the same."""
    lines = []
    for path in sorted(folder.glob("reproduced/*/reproduced.json")):
        r = json.loads(path.read_text())
        metrics = ", ".join(f"{k} {r['first'][k]:.4f} then {r['again'].get(k, math.nan):.4f}" for k in sorted(r["first"]) if k.startswith("test/"))
        items = f"; its {r['items']:,} per-item predictions" if r.get("items") else ""
        outcome = "**identical**" if r["identical"] else f"**different** ({', '.join(r['differ'])})"
        lines.append(f"- `{r['run']}`, run again on {r['date']} on CPU {r['machine'].get('cpu')} by `python src/compare.py reproduce={shown(folder / r['run'])}`: "
                     f"{metrics}{items}: {outcome}.")
    return lines


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
    manifest, runs, unfinished = read_compare(folder)
    report_dir.mkdir(parents=True, exist_ok=True)
    made = figures(runs)
    text = markdown(manifest, runs, folder, {name: caption for name, (_, caption) in made.items()}, regenerated_by, unfinished)
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

