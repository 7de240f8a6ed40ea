"""Tokenizing the 25,000 bundled IMDB reviews: the classic recipe against our data pipeline.

    python bench/bench_tokenize.py [--max-length 128] [--limit N]

- classic: the tokenizer the classic BERT fine-tuning recipe used (Python WordPiece, `BertTokenizerLegacy`
  in transformers 5), `tokenizer.encode` one review at a time, then every review padded to max_length with
  its attention mask;
- classic-fast: the same loop with the Rust tokenizer, to show how much of the gain is the tokenizer alone;
- ours cold: `IMDBDataModule.setup()` on an empty cache: reading the CSV, cleaning, the 9:1 split, one
  batched tokenizer call, packing and writing the cache; everything the classic rows leave out included;
- ours cached: the same call again, reading the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import best_of, save

from bertgpt.data import tokenize
from bertgpt.data.reviews import IMDBDataModule, load_corpus
from bertgpt.models.hub import resolve_checkpoint


def classic(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    ids = [tokenizer.encode(t, add_special_tokens=True, max_length=max_length, truncation=True) for t in texts]
    padded = torch.tensor([x + [tokenizer.pad_token_id] * (max_length - len(x)) for x in ids])
    attention_mask = (padded != tokenizer.pad_token_id).long()  # noqa: F841 (the recipe builds it; timed with the rest)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="time only the first N reviews (all 25,000 by default)")
    args = parser.parse_args()
    from transformers import AutoTokenizer, BertTokenizerLegacy

    folder = resolve_checkpoint("all-minilm-l6-v2")
    corpus = load_corpus("bundled", None, "text", "label")
    texts = [tokenize.clean(t) for t in corpus.train.texts[: args.limit]]
    n = len(texts)
    print(f"{n} reviews, max_length {args.max_length}, {torch.get_num_threads()} threads", flush=True)
    seconds, ids = {}, {}
    fast = AutoTokenizer.from_pretrained(folder)
    for name, tokenizer in (("classic", BertTokenizerLegacy.from_pretrained(folder)), ("classic-fast", fast)):
        start = time.perf_counter()
        ids[name] = classic(tokenizer, texts, args.max_length)
        seconds[name] = time.perf_counter() - start
        print(f"  {name:<13} {seconds[name]:7.2f} s  {n / seconds[name]:8.0f} reviews/s", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        def ours():
            IMDBDataModule(tokenizer="all-minilm-l6-v2", max_length=args.max_length, cache_dir=cache, train_size=args.limit).setup()

        start = time.perf_counter()
        ours()
        seconds["ours-cold"] = time.perf_counter() - start
        seconds["ours-cached"] = best_of(ours, 3)
    for name in ("ours-cold", "ours-cached"):
        print(f"  {name:<13} {seconds[name]:7.2f} s  {n / seconds[name]:8.0f} reviews/s   "
              f"{seconds['classic'] / seconds[name]:6.1f}x classic, {seconds['classic-fast'] / seconds[name]:5.1f}x classic-fast", flush=True)
    # Speed is worth nothing if the ids differ: ours must give exactly the recipe's tokens.
    same = tokenize.encode(fast, texts, args.max_length) == ids["classic-fast"]
    print(f"  ids identical to the classic recipe's: {same}")
    if not same:
        raise SystemExit("error: our token ids differ from the per-review tokenizer.encode ids")
    ratios = {f"{k}_x_classic": round(seconds["classic"] / seconds[k], 2) for k in ("ours-cold", "ours-cached")}
    save("tokenize", {"reviews": n, "max_length": args.max_length, "seconds": {k: round(v, 3) for k, v in seconds.items()}, **ratios})


if __name__ == "__main__":
    main()
