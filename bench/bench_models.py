"""Forward + backward time of our hand-written models against Hugging Face's, on the same weights.

    python bench/bench_models.py            # all-MiniLM-L6-v2: ours (bert.py) vs BertForSequenceClassification
    python bench/bench_models.py --gpt      # also SmolLM2-135M: ours (gpt.py) vs LlamaForSequenceClassification

A training step's work without the optimizer: cross-entropy on the class logits, backward, in train mode
(dropout on, as in fine-tuning), on a right-padded batch (lengths uniform in [seq/2, seq]). Ours and HF
alternate iteration by iteration so that other load on the machine hits both alike; the figure is the
median. ratio = HF ms / our ms: >= 1.0 means ours is no slower. Results go to bench/results/models.json
(merged with what is there, so a BERT-only run keeps an earlier GPT figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from common import ROOT  # noqa: E402  (puts src/ on the path: runnable from a checkout without `pip install -e .`)

from bertgpt.files import write_text  # noqa: E402
from bertgpt.host import machine  # noqa: E402
from bertgpt.models import bert, gpt  # noqa: E402
from bertgpt.models.convert import from_hf  # noqa: E402
from bertgpt.models.hub import resolve_checkpoint  # noqa: E402
from bertgpt.models.library import load_tokenizer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "models.json"


def make_batch(batch: int, seq: int, vocab: int, pad_id: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    ids = ids.masked_fill(ids == pad_id, pad_id + 1)  # a real token must never read as padding
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    labels = torch.randint(0, 2, (batch,), generator=g)
    return ids.masked_fill(mask == 0, pad_id), mask, labels


def step(model, ids, mask, labels) -> float:
    t = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    F.cross_entropy(logits, labels).backward()
    elapsed = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return elapsed


def compare(name: str, ours, hf, ids, mask, labels, warmup: int, iters: int) -> dict:
    ours.train(), hf.train()
    for _ in range(warmup):
        step(ours, ids, mask, labels), step(hf, ids, mask, labels)
    times = {"ours": [], "hf": []}
    for i in range(iters):
        order = ("ours", "hf") if i % 2 == 0 else ("hf", "ours")
        for who in order:
            times[who].append(step(ours if who == "ours" else hf, ids, mask, labels))
    ours_ms, hf_ms = (1000 * statistics.median(times[k]) for k in ("ours", "hf"))
    result = {
        "ours_ms": round(ours_ms, 1), "hf_ms": round(hf_ms, 1), "ratio_hf_over_ours": round(hf_ms / ours_ms, 3),
        "ours_ms_all": [round(1000 * t, 1) for t in times["ours"]], "hf_ms_all": [round(1000 * t, 1) for t in times["hf"]],
        "params": sum(p.numel() for p in ours.parameters()),
    }
    print(f"{name:>8}: ours {ours_ms:8.1f} ms/iter   HF {hf_ms:8.1f} ms/iter   HF/ours {hf_ms / ours_ms:5.3f}", flush=True)
    return result


def bench_bert(args) -> dict:
    name = "all-minilm-l6-v2"
    pad_id = load_tokenizer(name).pad_token_id
    hf = transformers.BertForSequenceClassification.from_pretrained(resolve_checkpoint(name), num_labels=2)
    ours = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict())  # the same weights, classifier included
    ids, mask, labels = make_batch(args.batch, args.seq, hf.config.vocab_size, pad_id)
    return compare("MiniLM", ours, hf, ids, mask, labels, args.warmup, args.iters) | {"checkpoint": name}


def bench_gpt(args) -> dict:
    name = "smollm2-135m"
    pad_id = load_tokenizer(name).pad_token_id
    hf = transformers.LlamaForSequenceClassification.from_pretrained(resolve_checkpoint(name), num_labels=2, pad_token_id=pad_id)
    ours = from_hf(gpt.GPTForSequenceClassification, hf.config, hf.state_dict())
    ids, mask, labels = make_batch(args.batch, args.seq, hf.config.vocab_size, pad_id)
    warmup, iters = args.gpt_warmup, args.gpt_iters  # ~30x the FLOPs of MiniLM per step
    return compare("SmolLM2", ours, hf, ids, mask, labels, warmup, iters) | {"checkpoint": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt", action="store_true", help="also time SmolLM2-135M (about a minute per iteration pair on 2 cores)")
    parser.add_argument("--no-bert", action="store_true", help="skip MiniLM")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--gpt-warmup", type=int, default=1)
    parser.add_argument("--gpt-iters", type=int, default=3)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    setup = {
        "device": "cpu", **machine(), "batch": args.batch, "seq": args.seq, "mode": "train (dropout on), fwd + bwd, median",
    }
    print(f"batch {args.batch} x {args.seq}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    if not args.no_bert:
        results["bert"] = setup | bench_bert(args) | {"load_average": round(os.getloadavg()[0], 2)}
    if args.gpt:
        results["gpt"] = setup | bench_gpt(args) | {"load_average": round(os.getloadavg()[0], 2)}
    write_text(RESULTS, json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
