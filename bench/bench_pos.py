"""POS tagging on the Brown corpus (12 universal tags): BERT against the bundled decoder, and the majority floor.

    python bench/bench_pos.py                      # what `make bench-pos` runs; writes bench/results/pos.json
    python bench/bench_pos.py --arms bert_epoch    # one arm

Each arm is one `src/train.py task=pos ...` run (printed before it starts), and its figures come from the
metrics.json it writes:
- `bert_epoch`: `model=bert`, one whole epoch on the 80% training split, tested on the whole 10% test split:
  the issue's goals (>= 97.5% word accuracy, an epoch in about 15 minutes);
- `bert_budget` and `gpt_budget`: the bundled BERT and the bundled SmolLM2-135M decoder under one small
  budget (--budget training sentences for one epoch at --budget-lr, --test-size validation and test
  sentences): the decoder is ~10x the compute per token, so a whole epoch of it takes hours on a 2-core CPU.
  63 steps at the task's 5e-5 leave both below the majority floor; the budget's rate is higher.
Every arm also reports the majority-tag-per-word baseline on its own test sentences.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, run_train, save

COLUMNS = ("test/acc", "test/f1", "test/baseline_acc", "train/epoch_time_s", "train/samples_per_sec", "train/tokens_per_sec", "train/peak_memory_mb")


def arms(budget: int, test_size: int, lr: float) -> dict[str, list[str]]:
    small = [f"data.train_size={budget}", f"data.test_size={test_size}", f"data.val_size={test_size}", f"model.lr={lr}"]
    return {
        "bert_epoch": ["model=bert"],
        "bert_budget": ["model=bert", *small],
        "gpt_budget": ["model=gpt", *small],
    }


def table(results: dict[str, dict]) -> str:
    lines = ["| arm | word acc | macro-F1 | majority baseline | epoch time | samples/s | peak MiB | command |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test/acc']:.2%} | {r['test/f1']:.4f} | {r['test/baseline_acc']:.2%} | "
                     f"{r['train/epoch_time_s'] / 60:.1f} min | {r['train/samples_per_sec']:.1f} | {r['train/peak_memory_mb']:.0f} | `{r['command']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(arms(0, 0, 0)), choices=list(arms(0, 0, 0)))
    parser.add_argument("--budget", type=int, default=2000, help="training sentences of the side-by-side arms")
    parser.add_argument("--test-size", type=int, default=2000, help="validation and test sentences of the side-by-side arms")
    parser.add_argument("--budget-lr", type=float, default=1e-4, help="the side-by-side arms' learning rate")
    args = parser.parse_args()
    planned = arms(args.budget, args.test_size, args.budget_lr)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name in args.arms:
            results[name] = run_train(name, ["task=pos", "trainer.devices=1", *planned[name]], Path(out), COLUMNS)
            save("pos", {"budget": args.budget, "test_size": args.test_size, "budget_lr": args.budget_lr, "arms": results})  # each arm as it ends
    print(f"\nPOS tagging, Brown universal tags, on {machine()['cpu']} ({machine()['cpu_kind']}, {machine()['precision']}):")
    print(table(results))


if __name__ == "__main__":
    main()
