"""The comparison's statistics: known intervals, the paired bootstrap's verdicts, reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bertgpt.errors import UserError
from bertgpt.experiments.stats import bootstrap_accuracy, paired_bootstrap, t_interval


def test_t_interval_matches_the_closed_forms_of_student_t():
    # With 1 and 2 degrees of freedom Student's t quantile has a closed form: tan(pi (p - 1/2)) and
    # (2p - 1) / sqrt(2 p (1 - p)), p = 0.975.
    p = 0.975
    two = t_interval([0.80, 0.84])  # mean 0.82, s / sqrt(n) = 0.02
    assert two.mean == pytest.approx(0.82)
    assert two.high - two.mean == pytest.approx(math.tan(math.pi * (p - 0.5)) * 0.02, rel=1e-9)  # 12.706 * 0.02
    three = t_interval([0.80, 0.82, 0.84])  # s = 0.02, half-width 4.303 * 0.02 / sqrt(3) = 0.050
    half = (2 * p - 1) / math.sqrt(2 * p * (1 - p)) * 0.02 / math.sqrt(3)
    assert (three.low, three.mean, three.high) == pytest.approx((0.82 - half, 0.82, 0.82 + half), rel=1e-9)
    assert 0.775 in three and 0.765 not in three
    with pytest.raises(UserError, match="at least 2 values"):
        t_interval([0.8])


def test_bootstrap_of_a_big_bernoulli_sample_matches_the_normal_approximation():
    n, p = 10_000, 0.8
    correct = np.random.default_rng(1).random(n) < p
    acc = bootstrap_accuracy(correct, resamples=2000, seed=7)
    half = 1.959964 * math.sqrt(acc.mean * (1 - acc.mean) / n)  # 0.0078
    assert acc.mean == pytest.approx(correct.mean())
    assert acc.low == pytest.approx(acc.mean - half, abs=0.0008) and acc.high == pytest.approx(acc.mean + half, abs=0.0008)


def test_seeds_widen_the_interval_when_they_disagree():
    rng = np.random.default_rng(2)
    items = rng.random(2000) < 0.8
    agreeing = np.stack([items] * 4)
    flips = np.stack([items ^ (rng.random(2000) < q) for q in (0.0, 0.05, 0.1, 0.2)])  # seeds 0..20% off the first
    narrow, wide = bootstrap_accuracy(agreeing, resamples=2000), bootstrap_accuracy(flips, resamples=2000)
    assert narrow.mean == pytest.approx(items.mean())
    assert wide.high - wide.low > 1.5 * (narrow.high - narrow.low)


def test_identical_arms_differ_by_nothing_found():
    rng = np.random.default_rng(3)
    arm = rng.random((3, 500)) < 0.85
    same = paired_bootstrap(arm, arm.copy(), resamples=2000)
    assert same.mean == 0 and 0 in same and same.verdict == "no difference found"
    # Two arms of the same skill but independent errors: a gap from noise alone, and the interval still holds 0.
    other = rng.random((3, 500)) < 0.85
    noise = paired_bootstrap(arm, other, resamples=2000)
    assert 0 in noise and noise.verdict == "no difference found"


def test_clearly_different_arms_get_a_verdict_both_ways():
    rng = np.random.default_rng(4)
    truth = rng.random(1000)
    strong = np.stack([truth < 0.9 + 0.01 * s for s in range(3)])  # ~90% correct
    weak = np.stack([truth < 0.75, truth < 0.76])  # ~75%, wrong on a superset of strong's mistakes: paired
    better = paired_bootstrap(strong, weak, resamples=2000)
    assert better.mean == pytest.approx(strong.mean() - weak.mean()) and better.low > 0.1 and better.verdict == "A better"
    worse = paired_bootstrap(weak, strong, resamples=2000)
    assert worse.high < -0.1 and worse.verdict == "B better"
    assert (worse.low, worse.high) == pytest.approx((-better.high, -better.low), abs=0.01)


def test_pairing_narrows_the_interval_of_correlated_arms():
    # A is B plus 20 more reviews right: paired, the gap is 2 points every draw; unpaired it would be ±~2.5.
    b = np.zeros(1000)
    b[:700] = 1
    a = b.copy()
    a[700:720] = 1
    diff = paired_bootstrap(a, b, resamples=2000)
    assert diff.mean == pytest.approx(0.02) and diff.low > 0.01 and diff.high < 0.03 and diff.verdict == "A better"


def test_same_seed_same_numbers_and_a_new_seed_new_draws():
    rng = np.random.default_rng(5)
    a, b = rng.random((2, 300)) < 0.8, rng.random((3, 300)) < 0.78
    assert paired_bootstrap(a, b, seed=11, resamples=1000) == paired_bootstrap(a, b, seed=11, resamples=1000)
    assert bootstrap_accuracy(a, seed=11, resamples=1000) == bootstrap_accuracy(a, seed=11, resamples=1000)
    assert paired_bootstrap(a, b, seed=11, resamples=1000).low != paired_bootstrap(a, b, seed=12, resamples=1000).low


def test_whole_sentences_are_drawn_when_their_words_share_a_fate():
    # 200 sentences of 10 words, each sentence all right or all wrong: 2,000 words but only 200 independent draws.
    sentences = np.arange(200) % 2 == 0
    words = np.repeat(sentences, 10).astype(float)
    by_word = bootstrap_accuracy(words, resamples=4000, seed=3)
    by_sentence = bootstrap_accuracy(words, resamples=4000, seed=3, groups=[10] * 200)
    assert by_word.mean == by_sentence.mean == 0.5
    assert by_word.high - by_word.mean == pytest.approx(1.96 * math.sqrt(0.25 / 2000), abs=0.004)  # 2.2 points
    assert by_sentence.high - by_sentence.mean == pytest.approx(1.96 * math.sqrt(0.25 / 200), abs=0.008)  # 6.9 points
    # Groups of one are the items themselves: the very same draws.
    assert bootstrap_accuracy(words, resamples=500, seed=3, groups=[1] * 2000) == bootstrap_accuracy(words, resamples=500, seed=3)
    # Sentences of unequal length: a draw's accuracy is its right words over its words.
    a = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 1], dtype=float)
    assert bootstrap_accuracy(a, resamples=200, groups=[3, 1, 6]).mean == pytest.approx(0.6)
    diff = paired_bootstrap(np.stack([words] * 2), 1 - words, resamples=2000, groups=[10] * 200)
    assert diff.mean == 0 and diff.low == pytest.approx(-2 * 1.96 * math.sqrt(0.25 / 200), abs=0.02) and diff.verdict == "no difference found"
    with pytest.raises(UserError, match="groups cover 1990 items in 199 groups, but there are 2000 items"):
        bootstrap_accuracy(words, groups=[10] * 199)


def test_arms_on_different_items_are_refused():
    with pytest.raises(UserError, match="500 and 499 items"):
        paired_bootstrap(np.ones(500), np.ones(499))



def test_a_sentiment_test_saves_each_review_in_the_splits_order(tiny_bert, toy_csv, tmp_path):
    """predictions.json: what the paired bootstrap needs, each held-out review's label and prediction in the test
    split's own order (the loader visits them sorted by length), agreeing with test/acc."""
    import lightning as L
    import torch

    from bertgpt.data.reviews import IMDBDataModule
    from bertgpt.pipeline import task_results
    from bertgpt.tasks.classification import SequenceClassifier

    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), max_length=32, eval_batch_size=8, cache_dir=str(tmp_path))
    model = SequenceClassifier(net={"_target_": "bertgpt.models.convert.build_bert", "checkpoint": tiny_bert}, labels=dm.labels).eval()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(model, datamodule=dm)
    task_results(model, dm, tmp_path)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    test = dm.splits["test"]
    assert list(dm.test_dataloader().sampler) != list(range(len(test)))  # the order to undo
    assert saved["labels"] == ["negative", "positive"] and saved["label"] == test.labels.tolist() and len(test) == 20
    with torch.no_grad():  # each review alone, in the split's order
        alone = [model(ids[None], torch.ones(1, len(ids), dtype=torch.long)).argmax(-1).item() for ids, _ in test]
    assert saved["prediction"] == alone
    assert np.equal(saved["label"], saved["prediction"]).mean() == pytest.approx(metrics["test/acc"], abs=1e-6)
    partial = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_test_batches=1)
    partial.test(model, datamodule=dm)
    assert model.test_predictions is None  # 8 of 20 reviews: not a held-out set to pair with another run's
