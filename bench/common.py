"""What every benchmark shares: the machine it ran on, and its results written as JSON beside the others."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "src"))  # runnable from a checkout without `pip install -e .`

from bertgpt.files import write_text  # noqa: E402
from bertgpt.host import machine as host_machine  # noqa: E402


def machine() -> dict:
    """`host.machine()`, and how busy it was and when: a figure from a loaded machine is not its speed."""
    return {**host_machine(), "load_average": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M")}


def save(name: str, results: dict) -> Path:
    """bench/results/<name>.json: the newest run, plus one line per run appended to <name>.jsonl (history)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), **results}
    path = RESULTS / f"{name}.json"
    write_text(path, json.dumps(record, indent=2) + "\n")
    with (RESULTS / f"{name}.jsonl").open("a") as history:
        history.write(json.dumps(record) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls: other load on a shared machine only ever adds time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_train(name: str, overrides: list[str], out: Path, columns: tuple[str, ...]) -> dict:
    """One `src/train.py` run in a process of its own, printed as a user would type it, its run folder out/name:
    the command, the wall time and the `columns` of the metrics.json it writes (None where it has none)."""
    command = [sys.executable, str(ROOT / "src" / "train.py"), *overrides, f"hydra.run.dir={out / name}"]
    shown = shlex.join(["python", "src/train.py", *command[2:-1]])
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    metrics = json.loads((out / name / "metrics.json").read_text())
    return {"command": shown, "wall_s": round(time.perf_counter() - start, 1), **{k: metrics.get(k) for k in columns}}
