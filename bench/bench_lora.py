"""Full fine-tuning against LoRA (model.lora.r=8, through peft) for the bundled BERT and the bundled decoder.

    python bench/bench_lora.py                          # what `make bench-lora` runs; writes bench/results/lora.json
    python bench/bench_lora.py --models bert --r 16     # one model, another rank
    python bench/bench_lora.py --train-size 32 --test-size 16 --max-length 32 -- data.batch_size=8   # a smoke run

Each arm is one `src/train.py` run (printed before it starts) on the IMDB reviews, and its figures come from
the metrics.json it writes. Both arms of a model get the same budget: the same --train-size training reviews
(the same ones: one seed), one epoch, so the same steps, and the same --test-size held-out reviews. They
differ in what trains, all the weights (`{model}_full`, at --full-lr) or rank-r adapters on the attention
projections and the head (`{model}_lora`, at --lora-lr: adapters start at zero and want a higher rate), and
report the trainable parameters, training samples/s, the peak memory (resident set on a CPU, allocated memory
on a GPU) and held-out accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, run_train, save

MODELS = ("bert", "gpt")
COLUMNS = ("params/total", "params/trainable", "test/acc", "test/f1", "train/epoch_time_s", "train/samples_per_sec", "train/peak_memory_mb")


def arms(models: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    budget = [f"data.train_size={args.train_size}", f"data.val_size={args.test_size}", f"data.test_size={args.test_size}",
              f"data.max_length={args.max_length}", "trainer.max_epochs=1"]
    planned = {}
    for model in models:
        planned[f"{model}_full"] = [f"model={model}", *budget, f"model.lr={args.full_lr}"]
        planned[f"{model}_lora"] = [f"model={model}", *budget, f"model.lr={args.lora_lr}", f"model.lora.r={args.r}"]
    return planned


def table(results: dict[str, dict]) -> str:
    """One row per arm; a LoRA arm's speed and memory also as a ratio to the full arm of its model."""
    lines = ["| arm | trainable / total params | samples/s | peak memory | held-out acc | F1 | command |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        full = results.get(name.replace("_lora", "_full")) if name.endswith("_lora") else None
        speed, memory = f"{r['train/samples_per_sec']:.1f}", f"{r['train/peak_memory_mb']:,.0f} MiB"
        if full:
            speed += f" ({r['train/samples_per_sec'] / full['train/samples_per_sec']:.2f}x)"
            memory += f" ({r['train/peak_memory_mb'] / full['train/peak_memory_mb']:.2f}x)"
        share = r["params/trainable"] / r["params/total"]
        lines.append(f"| {name} | {r['params/trainable'] / 1e6:.2f}M / {r['params/total'] / 1e6:.1f}M ({share:.2%}) | {speed} | {memory} | "
                     f"{r['test/acc']:.2%} | {r['test/f1']:.3f} | `{r['command']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="model=bert (MiniLM), model=gpt (SmolLM2-135M)")
    parser.add_argument("--train-size", type=int, default=1000, help="training reviews of every arm")
    parser.add_argument("--test-size", type=int, default=500, help="held-out reviews (validation and test) of every arm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--r", type=int, default=8, help="the adapters' rank (model.lora.r)")
    parser.add_argument("--full-lr", type=float, default=5e-5, help="full fine-tuning's rate")
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA's rate")
    parser.add_argument("overrides", nargs="*", help="more src/train.py overrides for every arm (after --)")
    args = parser.parse_args()
    planned = arms(args.models, args)
    settings = {k: v for k, v in vars(args).items() if k != "models"}
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name, overrides in planned.items():
            results[name] = run_train(name, ["trainer.devices=1", *overrides, *args.overrides], Path(out), COLUMNS)
            save("lora", {**settings, "arms": results})  # each arm as it ends
    host = machine()
    print(f"\nFull fine-tuning vs LoRA r={args.r}, {args.train_size} reviews, 1 epoch, on {host['cpu']} ({host['cpu_kind']}, {host['precision']}):")
    print(table(results))


if __name__ == "__main__":
    main()
