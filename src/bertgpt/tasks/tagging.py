"""Sequence labelling (POS tagging, or BIO entity tags): one label per word, read from its first subword.

The datamodule (data/tagging.py) labels the first subword of each word and gives every other position -100,
Hugging Face `run_ner.py`'s convention, so the metrics below count words, not subwords. A causal decoder tags
each word having seen only the words to its left: the one place where BERT and GPT differ by construction.
"""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from bertgpt.data.collate import IGNORE
from bertgpt.tasks.classification import Classifier


class TokenClassifier(Classifier):
    """Tags every word. Logs word accuracy (`acc`) and macro-F1 over tags (`f1`); at test time also each tag's
    precision, recall and F1, and, for BIO tags, seqeval's entity-level F1 (`test/entity_f1`)."""

    head = "token"

    def __init__(self, *args, is_bio: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.hparams.labels)
        self.test_per_tag = MetricCollection({
            "precision": MulticlassPrecision(n, average="none"),
            "recall": MulticlassRecall(n, average="none"),
            "f1": MulticlassF1Score(n, average="none"),
        })
        self._entities: tuple[list, list] = ([], [])

    def metrics(self, prefix: str) -> MetricCollection:
        n = len(self.hparams.labels)
        return MetricCollection({"acc": MulticlassAccuracy(n, average="micro"), "f1": MulticlassF1Score(n, average="macro")}, prefix=prefix)

    def test_step(self, batch, batch_idx):
        preds, targets = super().test_step(batch, batch_idx)
        self.test_per_tag.update(preds, targets)
        if self.hparams.is_bio:  # seqeval wants the tag strings of each sentence: cut the flat, row-major words by row
            names, words_per_row = self.hparams.labels, (batch["labels"] != IGNORE).sum(1).tolist()
            for row_pred, row_true in zip(preds.split(words_per_row), targets.split(words_per_row)):
                self._entities[0].append([names[i] for i in row_true.tolist()])
                self._entities[1].append([names[i] for i in row_pred.tolist()])

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_per_tag.reset()
        self._entities = ([], [])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        per_tag = {k: v.tolist() for k, v in self.test_per_tag.compute().items()}
        self.per_tag = {tag: {k: per_tag[k][i] for k in per_tag} for i, tag in enumerate(self.hparams.labels)}
        if self.hparams.is_bio and self._entities[0]:
            from seqeval.metrics import f1_score

            self.log("test/entity_f1", f1_score(*self._entities), sync_dist=False)


def per_tag_table(per_tag: dict[str, dict[str, float]]) -> str:
    """A Markdown table of each tag's precision, recall and F1 on the test split."""
    lines = ["| tag | precision | recall | F1 |", "|---|---|---|---|"]
    for tag, m in per_tag.items():
        lines.append(f"| {tag} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |")
    return "\n".join(lines)
