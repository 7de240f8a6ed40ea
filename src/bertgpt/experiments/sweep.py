"""At the end of a Hydra multirun: one table of every trial, best first."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bertgpt.files import write_text


def trial_rows(sweep_dir: Path, metric: str) -> list[dict]:
    rows = []
    for metrics_file in sweep_dir.glob("*/metrics.json"):
        trial = metrics_file.parent
        overrides = OmegaConf.load(trial / ".hydra" / "overrides.yaml") if (trial / ".hydra" / "overrides.yaml").exists() else []
        metrics = json.loads(metrics_file.read_text())
        params = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("hparams_search", "hydra.")))
        rows.append({"trial": int(trial.name) if trial.name.isdigit() else trial.name, metric: metrics.get(metric), "params": params, "metrics": metrics})
    return sorted(rows, key=lambda r: -1 if r[metric] is None else r[metric], reverse=True)


def format_table(rows: list[dict], metric: str, keys: list[str]) -> str:
    """`keys`: the searched parameters (fixed overrides like paths would only crowd the table)."""
    extra = ["val/f1", "train/samples_per_sec"]
    header = ["rank", "trial", metric, *extra, *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, start=1):
        value = "failed" if r[metric] is None else f"{r[metric]:.4f}"
        cells = [str(rank), str(r["trial"]), value, *(f"{r['metrics'].get(e, float('nan')):.4g}" for e in extra), *(_short(r["params"].get(k, "")) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


class SweepTable(Callback):
    def __init__(self, metric: str = "val/acc"):
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = trial_rows(sweep_dir, self.metric)
        if not rows:
            print(f"No finished trials under {sweep_dir}.")
            return
        searched = list(config.hydra.sweeper.get("params") or {})
        table = format_table(rows, self.metric, searched or sorted({k for r in rows for k in r["params"]}))
        write_text(sweep_dir / "trials.md", table + "\n")
        print(f"\nTrials sorted by {self.metric} ({sweep_dir}/trials.md):\n{table}")
