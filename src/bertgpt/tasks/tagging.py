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

    def metrics(self, prefix: str) -> MetricCollection:
        n = len(self.hparams.labels)
        return MetricCollection({"acc": MulticlassAccuracy(n, average="micro"), "f1": MulticlassF1Score(n, average="macro")}, prefix=prefix)

    def test_step(self, batch, batch_idx):
        preds, targets = super().test_step(batch, batch_idx)
        self.test_per_tag.update(preds, targets)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.test_per_tag.reset()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        per_tag = {k: v.tolist() for k, v in self.test_per_tag.compute().items()}
        self.per_tag = {tag: {k: per_tag[k][i] for k in per_tag} for i, tag in enumerate(self.hparams.labels)}
        if self.hparams.is_bio and self._rows["test"]:
            from seqeval.metrics import f1_score

            # seqeval scores entities sentence by sentence, from tag strings: the test's rows are the sentences
            names, rows = self.hparams.labels, self._rows["test"]
            true = [[names[i] for i in target.tolist()] for _, target in rows]
            predicted = [[names[i] for i in pred.tolist()] for pred, _ in rows]
            self.log("test/entity_f1", f1_score(true, predicted), sync_dist=False)


def per_tag_table(per_tag: dict[str, dict[str, float]]) -> str:
    """A Markdown table of each tag's precision, recall and F1 on the test split."""
    lines = ["| tag | precision | recall | F1 |", "|---|---|---|---|"]
    for tag, m in per_tag.items():
        lines.append(f"| {tag} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |")
    return "\n".join(lines)
