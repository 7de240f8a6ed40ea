"""Linear probes on frozen representations: how much of the task each layer of a model already holds.

    python src/probe.py checkpoint=all-minilm-l6-v2 data.train_size=2000 data.val_size=500
    python src/probe.py checkpoint=smollm2-135m task=pos data.train_size=2000 data.test_size=500

The data is the datamodule `src/train.py` builds with the same `data.*` options (the checkpoint's own tokenizer,
the same split and size limits): the probe trains on its train split and is tested on its test split, in the
split's order (for IMDB the held-out slice a fine-tuned run tests on, so `predictions.json` pairs with one).

The backbone (transformers' AutoModel, in eval mode, no gradients) runs once over both splits; every layer's
output (the embeddings, then each block's) is pooled per item and cached on disk, so a rerun on the same inputs
fits the probes without running the model. An item is a review (pooled as its `first` token, the `mean` of its
real tokens, or its `last` real token) or, for POS, a word (its first subword: where the datamodule puts its tag).
Each (layer, pooling) gets a standardized logistic regression, and its test accuracy a bootstrap interval: the
curve of what each layer holds. The probe's own score is one (layer, pooling), chosen without the test split: by
its cross-validated accuracy on the training examples (`probe.selection_folds` folds, whole sentences for POS),
where every training example is predicted once by a fit that did not see it. Taking the curve's maximum instead
would pick the luckiest of 21 (MiniLM) or 93 (SmolLM2) test readings, an optimism that grows with the candidates;
probes.json keeps that maximum beside the choice, so the two can be compared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from bertgpt.data.base import IGNORE, TokenizedSplit
from bertgpt.errors import UserError
from bertgpt.experiments.stats import bootstrap_accuracy
from bertgpt.files import atomic_file, write_text
from bertgpt.models.hub import BUNDLED, cache_root, resolve_checkpoint

log = logging.getLogger(__name__)

POOLINGS = ("first", "mean", "last")  # a review's three summaries
WORD = "word"  # a POS item's one "pooling": the word's first subword
FEATURES_FORMAT = 1  # bump when what the cache holds changes
PROGRESS_EVERY_S = 30.0
# Feature values (items x features) from which a probe's folds are fitted in worker processes: below it, starting and
# feeding the workers costs more than the fits (docs/performance.md, "Probe fits").
PARALLEL_FOLDS_FROM = 1_000_000
PRECISIONS = ("32-true", "bf16-mixed")  # of the feature pass, as Lightning names them


# ----- the backbone ------------------------------------------------------------------------------------------


def checkpoint_folder(checkpoint: str) -> Path:
    """The local Hugging Face folder of a bundled name or a folder (our pretraining exports included)."""
    name = str(checkpoint)
    if name.endswith(".ckpt"):
        raise UserError(f"checkpoint={name}: a training checkpoint; probe a Hugging Face folder: export it first "
                        "(python src/export.py ckpt_path=... out=DIR) and pass checkpoint=DIR.")
    folder = Path(resolve_checkpoint(name))
    if not folder.is_dir():
        raise UserError(f"checkpoint={name}: neither a bundled model ({', '.join(BUNDLED)}) nor a Hugging Face folder "
                        "(config.json, weights, tokenizer files).")
    return folder


def load_backbone(folder: Path, device: torch.device) -> torch.nn.Module:
    """The checkpoint's body without any head (AutoModel), returning every layer's hidden states."""
    from transformers import AutoModel

    from bertgpt.models.attention import register_with_transformers

    try:
        model = AutoModel.from_pretrained(folder, output_hidden_states=True, dtype=torch.float32, attn_implementation=register_with_transformers())
    except (ValueError, OSError) as err:  # an architecture transformers does not know, missing weight files
        raise UserError(f"checkpoint={folder}: transformers' AutoModel cannot load it ({' '.join(str(err).split())[:200]}).") from err
    return model.to(device).eval()


def real_token_positions(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) real-token index of each row, (B,) each, under right or left padding alike."""
    mask = attention_mask.long()
    first = mask.argmax(1)  # argmax returns the first of equal maxima
    last = mask.size(1) - 1 - mask.flip(1).argmax(1)
    return first, last


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's review summaries: hidden (layers, B, T, D) -> {pooling: (layers, B, D)}."""
    first, last = real_token_positions(attention_mask)
    rows = torch.arange(hidden.size(1), device=hidden.device)
    weights = attention_mask.to(hidden.dtype)[None, :, :, None]
    return {
        "first": hidden[:, rows, first],
        "mean": (hidden * weights).sum(2) / weights.sum(2).clamp(min=1),
        "last": hidden[:, rows, last],
    }


@torch.no_grad()
def hidden_states(model: torch.nn.Module, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
    """(layers + 1, B, T, D) in fp32: the embeddings' output, then each block's; `bf16`: computed under bf16
    autocast, as training's bf16-mixed. Positions count real tokens only, so a left-padded review gets the
    positions it has alone, whatever the batch pads it to."""
    mask = batch["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.autocast(mask.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions)
    layers = getattr(out, "hidden_states", None)
    if not layers:
        raise UserError(f"{type(model).__name__} returns no hidden states: probe a transformers model that does (output_hidden_states).")
    return torch.stack(layers).float()


def item_counts(split: TokenizedSplit, per_word: bool) -> np.ndarray:
    """How many probe items each example holds: 1 review, or its labelled words (first subwords)."""
    if not per_word:
        return np.ones(len(split), dtype=np.int64)
    labelled = torch.cat([torch.zeros(1, dtype=torch.long), (split.token_labels != IGNORE).long().cumsum(0)])
    return (labelled[split.offsets[1:]] - labelled[split.offsets[:-1]]).numpy()


def split_features(model, split: TokenizedSplit, collator, batch_size: int, per_word: bool, name: str = "",
                   bf16: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({pooling: (layers + 1, items, D)}, labels (items,)) of a split, items in the split's order (a POS split's
    words flat, sentence after sentence). Batches go longest first, to pad least, and are put back in order."""
    device = next(model.parameters()).device
    counts = item_counts(split, per_word)
    starts = np.concatenate([[0], np.cumsum(counts)])
    order = np.argsort(-split.lengths.numpy(), kind="stable")
    features: dict[str, np.ndarray] = {}
    labels = np.empty(int(starts[-1]), dtype=np.int64)
    started = last_report = time.perf_counter()
    for done in range(0, len(order), batch_size):
        chunk = order[done : done + batch_size]
        batch = collator([split[int(i)] for i in chunk])
        hidden = hidden_states(model, {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}, bf16)
        if per_word:
            tagged = batch["labels"] != IGNORE  # row by row: each sentence's words in order
            pooled = {WORD: hidden[:, tagged.to(device)]}
            batch_labels = batch["labels"][tagged]
        else:
            pooled = pool(hidden, batch["attention_mask"].to(device))
            batch_labels = batch["labels"]
        where = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in chunk])
        for key, values in pooled.items():
            if key not in features:
                features[key] = np.empty((values.size(0), len(labels), values.size(-1)), dtype=np.float32)
            features[key][:, where] = values.cpu().numpy()
        labels[where] = batch_labels.numpy()
        if time.perf_counter() - last_report > PROGRESS_EVERY_S:
            last_report = time.perf_counter()
            log.info("Features of %s: %d/%d examples, %.0f s", name, done + len(chunk), len(order), last_report - started)
    return features, labels


# ----- the cache ---------------------------------------------------------------------------------------------


def features_key(folder: Path, task: str, splits: dict[str, TokenizedSplit], precision: str) -> str:
    """What the features depend on: the weights (each file's name, size and time), the task, the precision and
    the very token ids and labels of each split (so every data option that changes them changes the key)."""
    h = hashlib.sha256(f"probe-features|v{FEATURES_FORMAT}|{folder.resolve()}|{task}|{precision}".encode())
    for file in sorted(folder.iterdir()):
        if file.is_file():
            stat = file.stat()
            h.update(f"|{file.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for name in sorted(splits):
        split = splits[name]
        for tensor in (split.ids, split.offsets, split.labels, split.token_labels):
            if tensor is not None:
                h.update(name.encode() + tensor.numpy().tobytes())
    return h.hexdigest()


def features_path(key: str, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "features" / f"{key[:24]}.npz"


def save_features(path: Path, key: str, features: dict[str, tuple[dict[str, np.ndarray], np.ndarray]]) -> None:
    """fp16 when every value fits (half the disk: a 30-layer decoder's 2,500 reviews are ~0.5 GB in fp32)."""
    arrays = {"key": np.array(key)}
    for split, (pooled, labels) in features.items():
        arrays[f"{split}/labels"] = labels
        for pooling, values in pooled.items():
            arrays[f"{split}/{pooling}"] = values.astype(np.float16) if np.abs(values).max() < 60_000 else values
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_features(path: Path, key: str) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]] | None:
    """What `save_features` wrote for `key` ({split: ({pooling: features as stored}, labels)}), or None."""
    if not path.is_file():
        return None
    with np.load(path) as stored:
        if str(stored["key"]) != key:
            return None
        fields = [name.split("/") for name in stored.files if "/" in name]
        return {split: ({f: stored[f"{split}/{f}"] for s, f in fields if s == split and f != "labels"},
                        stored[f"{split}/labels"]) for split in {s for s, _ in fields}}


# ----- the probes --------------------------------------------------------------------------------------------


def probe_model(seed: int, C: float = 1.0, max_iter: int = 2000):
    """A logistic regression on standardized features (lbfgs: multinomial over the tags), not yet fitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def check_two_classes(labels: np.ndarray, where: str, fix: str) -> None:
    if len(np.unique(labels)) < 2:
        raise UserError(f"{where} holds only label {int(labels[0])}: a probe needs at least two classes. {fix}")


def selection_folds(counts: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each training item's fold, 0 to folds - 1: the examples dealt in a random order into `folds` folds of near-equal
    size (an example holds `counts` items: 1 review, or a sentence's words, which go together so that no sentence
    is on both sides of a fit)."""
    examples = len(counts)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= examples:
        raise UserError(f"probe.selection_folds={folds}: give a whole number of folds from 2 to the {examples} training examples "
                        "(default 5); each is held out of one fit, to choose the layer and pooling.")
    fold = np.empty(examples, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(examples)] = np.arange(examples) % folds
    return np.repeat(fold, counts)


def probe_layers(train: tuple[dict[str, np.ndarray], np.ndarray], test: tuple[dict[str, np.ndarray], np.ndarray],
                 fold: np.ndarray, seed: int, C: float = 1.0, max_iter: int = 2000, resamples: int = 10_000,
                 groups: list[int] | None = None) -> dict:
    """{"accuracy", "interval": {pooling: test accuracy per layer}, "selection": {pooling: cross-validated training
    accuracy per layer}, "best": {pooling, layer, acc, selection_acc}, "test_max": the curve's maximum, "predictions":
    the best's}.

    Each candidate is fitted on all training items (its test accuracy, the curve) and once more per fold of `fold`
    (each training item's, `selection_folds`) without that fold, which it then predicts: the accuracy of those
    out-of-fold predictions chooses `best` (the first candidate wins a tie). The intervals resample the test items,
    or whole `groups` of them."""
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from threadpoolctl import threadpool_limits

    (train_pooled, train_y), (test_pooled, test_y) = train, test
    check_two_classes(train_y, "the training split", "Raise data.train_size.")
    folds = np.unique(fold)
    for k in folds:
        check_two_classes(train_y[fold != k], f"the training split without its selection fold {k}",
                          "Raise data.train_size or lower probe.selection_folds.")
    # The fits' matrices are small: BLAS threads inside one fit cost more than they give, so each fit gets one
    # thread, and the folds of the larger ones are fitted side by side in processes (docs/performance.md, "Probe fits").
    cv = PredefinedSplit(fold)
    accuracy, interval, selection, best, test_max, predictions = {}, {}, {}, None, None, None
    with threadpool_limits(1):
        for pooling, train_x in train_pooled.items():
            accuracy[pooling], interval[pooling], selection[pooling] = [], [], []
            for layer in range(train_x.shape[0]):
                started = time.perf_counter()
                x = train_x[layer].astype(np.float32)  # fp32 one layer at a time
                predicted = probe_model(seed, C, max_iter).fit(x, train_y).predict(test_pooled[pooling][layer].astype(np.float32))
                result = bootstrap_accuracy(predicted == test_y, resamples=resamples, seed=seed, groups=groups)
                workers = min(len(folds), os.cpu_count() or 1) if x.size >= PARALLEL_FOLDS_FROM else 1
                out_of_fold = cross_val_predict(probe_model(seed, C, max_iter), x, train_y, cv=cv, n_jobs=workers)
                chosen_by = float(np.mean(out_of_fold == train_y))
                accuracy[pooling].append(result.mean)
                interval[pooling].append([result.low, result.high])
                selection[pooling].append(chosen_by)
                log.info("Probe %s, layer %d/%d: cross-validated training accuracy %.4f, test accuracy %.4f [%.4f, %.4f], %.1f s", pooling,
                         layer, train_x.shape[0] - 1, chosen_by, result.mean, result.low, result.high, time.perf_counter() - started)
                if best is None or chosen_by > best["selection_acc"]:
                    best, predictions = {"pooling": pooling, "layer": layer, "acc": result.mean, "selection_acc": chosen_by}, predicted
                if test_max is None or result.mean > test_max["acc"]:
                    test_max = {"pooling": pooling, "layer": layer, "acc": result.mean}
    return {"accuracy": accuracy, "interval": interval, "selection": selection, "best": best, "test_max": test_max,
            "predictions": predictions}


# ----- src/probe.py ------------------------------------------------------------------------------------------


def build_datamodule(cfg):
    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    missing = [s for s in ("train", "test") if s not in datamodule.splits or not len(datamodule.splits[s])]
    if missing:
        raise UserError(f"the data has no {' or '.join(missing)} split to probe: drop data.test_all and keep data.train_size / data.test_size above 0.")
    return datamodule


def main(cfg, task: str) -> dict:
    """src/probe.py: probes.json, metrics.json and predictions.json of `cfg.checkpoint` on `task` in the run folder."""
    from bertgpt.pipeline import write_metrics

    if cfg.precision not in PRECISIONS:
        raise UserError(f"precision={cfg.precision}: choose one of {', '.join(PRECISIONS)} (the feature pass; default: what this machine trains in).")
    folder = checkpoint_folder(cfg.checkpoint)
    datamodule = build_datamodule(cfg)
    splits = {name: datamodule.splits[name] for name in ("train", "test")}
    per_word = splits["train"].token_labels is not None
    key = features_key(folder, task, splits, cfg.precision)
    path = features_path(key, cfg.data.get("cache_dir"))
    started = time.perf_counter()
    features = load_features(path, key)
    from_cache = features is not None
    if from_cache:
        log.info("features from cache %s", path)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_backbone(folder, device)
        log.info("Features of %s on %s (%s): %s examples, every layer", cfg.checkpoint, device, cfg.precision, {k: len(v) for k, v in splits.items()})
        collator, batch_size, bf16 = datamodule.collator(), datamodule.hparams.eval_batch_size, cfg.precision == "bf16-mixed"
        features = {name: split_features(model, split, collator, batch_size, per_word, name, bf16) for name, split in splits.items()}
        save_features(path, key, features)
        features = load_features(path, key)  # as a rerun reads them (fp16), so that both give the same probes
        log.info("Features cached in %s", path)
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    probe = cfg.probe
    words = item_counts(splits["test"], per_word).tolist() if per_word else None  # each test sentence's, for the intervals
    fold = selection_folds(item_counts(splits["train"], per_word), probe.selection_folds, cfg.seed)
    results = probe_layers(features["train"], features["test"], fold, cfg.seed, probe.C, probe.max_iter, probe.resamples, words)
    probe_seconds = time.perf_counter() - started

    output_dir = Path(cfg.paths.output_dir)
    n_layers = next(iter(features["train"][0].values())).shape[0] - 1
    best = results["best"]
    report = {
        "task": task, "checkpoint": str(cfg.checkpoint), "n_layers": n_layers,
        "n_train": len(features["train"][1]), "n_test": len(features["test"][1]), "layers": list(range(n_layers + 1)),
        "accuracy": results["accuracy"], "interval": results["interval"], "selection": results["selection"],
        "selection_folds": probe.selection_folds, "best": best, "test_max": results["test_max"],
        "precision": str(cfg.precision), "feature_seconds": feature_seconds, "probe_seconds": probe_seconds, "from_cache": from_cache,
    }
    write_text(output_dir / "probes.json", json.dumps(report, indent=2) + "\n")
    predictions = {"labels": list(datamodule.labels), "label": features["test"][1].tolist(), "prediction": results["predictions"].tolist(),
                   **({"words": words} if words else {})}
    write_text(output_dir / "predictions.json", json.dumps(predictions) + "\n")
    write_metrics({"test/acc": best["acc"], "test/samples": report["n_test"], "probe/best_layer": best["layer"],
                   "probe/best_pooling": best["pooling"], "probe/feature_seconds": feature_seconds,
                   "probe/probe_seconds": probe_seconds, "probe/from_cache": from_cache}, output_dir)
    log.info("Chosen probe (by cross-validation on the training %s): %s pooling, layer %d of %d, test accuracy %.4f on %d %s (the test curve's "
             "maximum: %.4f). Written to %s", "words" if per_word else "reviews", best["pooling"], best["layer"], n_layers, best["acc"],
             report["n_test"], "words" if per_word else "reviews", results["test_max"]["acc"], output_dir)
    return report
