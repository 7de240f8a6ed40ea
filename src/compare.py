"""BERT vs GPT under one budget: every arm as its own src/train.py (and src/pretrain.py) run, then the report.

    python src/compare.py                                   # what `make compare` runs: reports/compare.md
    python src/compare.py compare.arms=[bert,bert_scratch]  # a subset of the arms
    python src/compare.py compare.scale=full                # the whole data, 5 seeds, on a GPU
    python src/compare.py report_only=logs/compare/default   # rewrite the report from a compare folder's files
    python src/compare.py reproduce=logs/compare/default/bert_seed2024  # re-run one run, compare its numbers
"""

from bertgpt.entries import compare

if __name__ == "__main__":
    compare()
