"""Inference: the start-up of a one-sentence `src/predict.py`, and batch throughput against `transformers.pipeline`.

    python bench/bench_predict.py                                  # what `make bench-predict` runs
    python bench/bench_predict.py --ckpt logs/train/runs/<run>/checkpoints/last.ckpt --reviews 1000 --lengths 128 256

- start-up: the median wall time of 3 runs of `python src/predict.py ckpt_path=... text="..."`, a fresh process each,
  alternating with as many on the same checkpoint without the tokenizer and config it stores (as written before
  it stored them: predict then loads both through transformers);
- throughput, per max_length, on the same --reviews bundled IMDB reviews: the whole commands `src/predict.py
  file=...` and `src/eval.py` (the reviews as an aclImdb-layout test split: Lightning's `Trainer.test`), start-up
  included; and in this process, predict's own predictor (`bertgpt.inference`: tokenize, batch, forward) against
  `transformers.pipeline("text-classification")` on the checkpoint's net exported as a Hugging Face folder
  (`save_pretrained`), both batch 64, truncated at max_length;
- agreement: the share of reviews whose predicted label is the same in predict and in the pipeline (the pipeline
  does not strip `<br />` or keep a review's tail, so it may differ on a few).
With no --ckpt, trains a quick library BERT first (2 steps: the weights' quality does not change the speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, save

from bertgpt.inference import load_predictor  # noqa: E402

SENTENCE = "A moving, beautiful film."


def timed(command: list[str], **kwargs) -> tuple[float, str]:
    """Wall seconds of `python command...` run from the checkout, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"$ python {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def quick_train_overrides(out: Path) -> list[str]:
    """src/train.py's overrides for a 2-step library BERT whose checkpoint lands under `out`."""
    return ["model=bert", "trainer.devices=1", "data.train_size=64", "data.val_size=32", "data.test_size=32",
            "trainer.max_steps=2", "logger=none", "test=false", f"hydra.run.dir={out / 'train'}"]


def quick_checkpoint(out: Path) -> Path:
    command = ["src/train.py", *quick_train_overrides(out)]
    print("$ python " + " ".join(command), flush=True)
    timed(command)
    return out / "train" / "checkpoints" / "last.ckpt"


def without_snapshot(ckpt: Path, out: Path) -> Path:
    """`ckpt` as checkpoints were written before they carried their tokenizer and backbone config."""
    import torch

    blob = torch.load(ckpt, weights_only=True)
    blob.pop("inference", None)
    torch.save(blob, out / "by-name.ckpt")
    return out / "by-name.ckpt"


def bundled_reviews(n: int, spare: int = 10) -> tuple[list[str], list[int], list[tuple[str, int]]]:
    """n bundled IMDB reviews (one line each, the classes alternating) and their labels, and `spare` others."""
    from bertgpt.data.reviews import load_corpus

    corpus = load_corpus()
    by_class = [[" ".join(t.split()) for t, y in zip(corpus.train.texts, corpus.train.labels) if y == c] for c in (0, 1)]
    rows = [(by_class[i % 2][i // 2], i % 2) for i in range(n + spare)]
    return [t for t, _ in rows[:n]], [y for _, y in rows[:n]], rows[n:]


def write_aclimdb(folder: Path, texts: list[str], labels: list[int], train: list[tuple[str, int]]) -> Path:
    """The reviews as the test split of an aclImdb folder; eval never trains, but the layout needs a train split."""
    for split, rows in (("test", list(zip(texts, labels))), ("train", train)):
        for i, (text, label) in enumerate(rows):
            path = folder / split / ("pos" if label else "neg") / f"{i}_1.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return folder


def export_library_net(predictor, folder: Path) -> Path:
    """The checkpoint's net as a Hugging Face folder, for `transformers.pipeline`, written as `src/export.py` writes
    it: predict runs a library BERT as our own, which goes back into the library's class with the same weights."""
    from bertgpt.export import hf_net
    from bertgpt.models.library import load_tokenizer

    hf_net(predictor.net, predictor.task.head, predictor.labels, predictor.tokenizer.pad_token_id).save_pretrained(folder)
    load_tokenizer(predictor.data["tokenizer"]).save_pretrained(folder)  # predictor's own is the checkpoint's snapshot, without transformers
    return folder


def in_process(predictor, texts: list[str], max_length: int, batch_size: int) -> dict:
    """What predict's model part does for `texts` (tokenize, batch, forward), timed in this process as the pipeline is."""
    predictor.data["max_length"] = max_length
    start = time.perf_counter()
    predictor.lines(texts, batch_size)
    elapsed = time.perf_counter() - start
    return {"run_s": round(elapsed, 2), "reviews_per_s": round(len(texts) / elapsed, 1)}


def hf_pipeline(folder: Path, texts: list[str], max_length: int, batch_size: int) -> dict:
    import torch
    from transformers import pipeline

    start = time.perf_counter()
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    loaded = time.perf_counter()
    with torch.inference_mode():
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length)
    done = time.perf_counter()
    return {"load_s": round(loaded - start, 2), "run_s": round(done - loaded, 2), "reviews_per_s": round(len(texts) / (done - loaded), 1),
            "labels": [row["label"] for row in out]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a checkpoint of src/train.py; default: train a quick library BERT")
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="start-up runs (the median is reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ckpt = args.ckpt.resolve() if args.ckpt else quick_checkpoint(out)
        texts, labels, spare = bundled_reviews(args.reviews)
        reviews = out / "reviews.txt"
        reviews.write_text("\n".join(texts) + "\n", encoding="utf-8")
        acl = write_aclimdb(out / "aclImdb", texts, labels, spare)
        predictor = load_predictor(str(ckpt))
        exported = export_library_net(predictor, out / "hf")

        kinds = {"stored": ckpt, "by_name": without_snapshot(ckpt, out)}
        runs = {kind: [] for kind in kinds}
        for _ in range(args.repeats):  # alternating, so that a drift of the machine falls on both
            for kind, path in kinds.items():
                runs[kind].append(round(timed(["src/predict.py", f"ckpt_path={path}", f"text={SENTENCE}"])[0], 2))
        startup, by_name = (statistics.median(runs[kind]) for kind in kinds)
        print(f"start-up: {startup:.2f} s (median of {runs['stored']}); without the stored tokenizer and config: {by_name:.2f} s "
              f"(median of {runs['by_name']})", flush=True)
        results = {"checkpoint": str(ckpt), "reviews": len(texts), "batch_size": args.batch_size, "startup_s": round(startup, 2),
                   "startup_runs_s": runs["stored"], "startup_by_name_s": round(by_name, 2), "startup_by_name_runs_s": runs["by_name"], "lengths": {}}

        for length in args.lengths:
            wall, printed = timed(["src/predict.py", f"ckpt_path={ckpt}", f"file={reviews}", f"max_length={length}", f"batch_size={args.batch_size}"])
            predicted = [line.split("\t", 1)[0] for line in printed.splitlines()]
            evaluated, _ = timed(["src/eval.py", f"ckpt_path={ckpt}", f"data.path={acl}", f"+data.max_length={length}",
                                  f"data.eval_batch_size={args.batch_size}", "logger=none", f"hydra.run.dir={out / f'eval{length}'}"])
            pipe = hf_pipeline(exported, texts, length, args.batch_size)
            row = {
                "predict": {"wall_s": round(wall, 2), "reviews_per_s": round(len(texts) / wall, 1)},
                "predictor": in_process(predictor, texts, length, args.batch_size),
                "eval": {"wall_s": round(evaluated, 2), "reviews_per_s": round(len(texts) / evaluated, 1)},
                "hf_pipeline": {k: v for k, v in pipe.items() if k != "labels"},
                "agreement": round(sum(a == b for a, b in zip(predicted, pipe["labels"])) / len(texts), 4),
            }
            results["lengths"][str(length)] = row
            print(f"max_length {length}: {row}", flush=True)
        save("predict", results)
    m = machine()
    print(f"\nInference on {m['cpu']} ({m['cpu_kind']}, load average {m['load_average']}), {len(texts)} reviews, batch {args.batch_size}:")
    print(f"one-sentence predict start-up: {startup:.2f} s ({by_name:.2f} s loading the tokenizer and config through transformers)")
    print("| max_length | src/predict.py (whole command) | its predictor in-process | src/eval.py (whole command) | transformers.pipeline (run; load) | same label |")
    print("|---|---|---|---|---|---|")
    for length, r in results["lengths"].items():
        print(f"| {length} | {r['predict']['reviews_per_s']}/s ({r['predict']['wall_s']} s) | {r['predictor']['reviews_per_s']}/s ({r['predictor']['run_s']} s) | "
              f"{r['eval']['reviews_per_s']}/s ({r['eval']['wall_s']} s) | {r['hf_pipeline']['reviews_per_s']}/s ({r['hf_pipeline']['run_s']} s; "
              f"{r['hf_pipeline']['load_s']} s) | {r['agreement']:.1%} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
