"""Prompting (src/prompt.py): the cached k-shot prefix scores what the full prompts score, the demonstrations are
balanced, the cloze reads a masked LM's [MASK], a wrong model is one error line, and the run's files line up with
the test split that src/train.py builds from the same data options."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import CHAT_QUESTION, CHAT_TEMPLATE, run_script, toy_reviews

from bertgpt.data.reviews import IMDBDataModule
from bertgpt.experiments.prompting import ChatPrompt, ChatScorer, ClozeScorer, balanced_demonstrations, cut, score_all
from bertgpt.models.library import load_tokenizer

TEMPLATE, QUESTION = CHAT_TEMPLATE, CHAT_QUESTION


@pytest.fixture(scope="module")
def tiny_mlm_export(tmp_path_factory) -> str:
    """What src/pretrain.py objective=mlm leaves in <run>/export: a BertForMaskedLM folder with its tokenizer."""
    from bertgpt.experiments.pretrain import export
    from bertgpt.tasks.language_model import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel("mlm", "all-minilm-l6-v2", n_layer=2, n_head=2, n_embd=32, n_inner=64, block_size=64, dropout=0.0)
    return str(export(model, tmp_path_factory.mktemp("pretrain") / "export"))


def chat_model(folder: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_demonstrations_are_balanced_distinct_and_drawn_by_the_seed():
    labels = [0] * 30 + [1] * 10
    for shots in (2, 4, 5, 8):
        picked = balanced_demonstrations(labels, shots, seed=7)
        counts = Counter(labels[i] for i in picked)
        assert len(set(picked)) == len(picked) == shots
        assert sorted(counts.values()) == [shots // 2, (shots + 1) // 2]
    assert balanced_demonstrations(labels, 4, seed=7) == balanced_demonstrations(labels, 4, seed=7)
    assert len({tuple(balanced_demonstrations(labels, 4, seed=s)) for s in range(5)}) > 1
    assert balanced_demonstrations(labels, 0, seed=7) == []


def test_cached_prefix_scores_equal_the_full_prompts(tiny_chat):
    tokenizer = load_tokenizer(tiny_chat)
    texts, labels = toy_reviews(12, seed=4)
    demonstrations = list(zip(texts[:3], labels[:3]))
    prompt = ChatPrompt(tokenizer, ["negative", "positive"], QUESTION, demonstrations=demonstrations)
    scorer = ChatScorer(chat_model(tiny_chat), prompt)
    reviews = texts[3:]
    items = scorer.items(reviews)
    assert len({len(x) for x in items}) > 3  # the batch is right-padded to very different lengths

    # The prefix and an item are exactly the template's tokens of the whole conversation.
    for review, item in zip(reviews, items):
        messages = prompt.context + [prompt.user(review)]
        full = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert prompt.prefix + item == list(full)
    assert scorer.cache is not None and scorer.cache.get_seq_length() == len(prompt.prefix) > 0

    cached = scorer.scores(items)
    uncached = scorer.scores(items, cached=False)
    one_by_one = torch.cat([scorer.scores([item], cached=False) for item in items])
    assert cached.shape == (len(reviews), 2)
    assert (cached - uncached).abs().max().item() < 1e-4
    assert (cached - one_by_one).abs().max().item() < 1e-4
    assert torch.equal(cached.argmax(-1), one_by_one.argmax(-1))
    assert scorer.cache.get_seq_length() == len(prompt.prefix)  # the batches left the shared cache as it was


def test_shots_change_the_prompt_and_the_label_tokens_open_the_answer(tiny_chat):
    tokenizer = load_tokenizer(tiny_chat)
    texts, labels = toy_reviews(4, seed=5)
    zero = ChatPrompt(tokenizer, ["negative", "positive"], QUESTION)
    two = ChatPrompt(tokenizer, ["negative", "positive"], QUESTION, demonstrations=[(texts[0], 0), (texts[1], 1)])
    assert zero.prefix == [] and zero.context == []  # the template's own system turn then comes with each review
    assert len(two.prefix) > 0 and two.prefix_text.count("<|im_start|>user") == 2
    assert f"{texts[0]}<|im_end|>\n<|im_start|>assistant\nnegative<|im_end|>" in two.prefix_text
    assert f"{texts[1]}<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>" in two.prefix_text
    assert tokenizer.decode(zero.item(texts[2])).startswith("<|im_start|>system\n")
    assert tokenizer.decode(two.item(texts[2])).startswith("<|im_start|>user\n")  # the system turn is in the prefix
    assert tokenizer.decode(two.item(texts[2])).endswith("<|im_start|>assistant\n")
    for word, token in zip(["negative", "positive"], zero.label_ids):
        assert word.startswith(tokenizer.decode([token])) and tokenizer.decode([token])
    assert zero.label_ids == two.label_ids


def test_scores_come_back_in_the_items_order():
    class Lengths:  # a scorer whose scores name the item they were computed from
        def scores(self, items):
            return torch.tensor([[float(len(x)), -float(len(x))] for x in items])

    items = [[1] * n for n in (3, 9, 1, 7, 7, 2, 5)]
    scores = score_all(Lengths(), items, batch_size=3)
    assert scores[:, 0].tolist() == [len(x) for x in items]


def test_cloze_fills_the_mask_of_a_masked_lm_within_max_length(tiny_mlm_export):
    from transformers import AutoModelForMaskedLM

    tokenizer = load_tokenizer(tiny_mlm_export)
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_export).eval()
    scorer = ClozeScorer(model, tokenizer, ["bad", "good"], "{review} It was {mask}.", max_length=24)
    texts, _ = toy_reviews(6, seed=2)
    items = scorer.items([" ".join([t] * 4) for t in texts])  # long reviews, cut to fit
    assert all(len(x) == 24 for x in items)
    assert all(tokenizer.decode(x).endswith("it was [MASK]. [SEP]") and x[0] == tokenizer.cls_token_id for x in items)
    scores = scorer.scores(items)
    with torch.no_grad():
        ids = torch.tensor(items)
        full = model(input_ids=ids).logits[:, -3][:, scorer.word_ids]  # [MASK] . [SEP]
    assert scores.shape == (6, 2) and (scores - full).abs().max().item() < 1e-4


def run_prompt(tmp_path, *args):
    run_dir = tmp_path / "run"
    return run_script("prompt", *args, f"hydra.run.dir={run_dir}"), run_dir


def test_cli_writes_predictions_in_the_test_split_order_and_consistent_metrics(tiny_chat, toy_csv, tmp_path):
    data = ["data.val_size=16", "data.max_length=32", "data.eval_batch_size=5", f"data.path={toy_csv}"]
    result, run = run_prompt(tmp_path, f"checkpoint={tiny_chat}", "method=chat", "shots=2", "seed=3", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Answer tokens at the assistant's first position" in result.stdout + result.stderr
    predictions = json.loads((run / "predictions.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    splits = IMDBDataModule(tiny_chat, path=str(toy_csv), val_size=16, max_length=32).raw_splits()  # as src/train.py splits
    test, train = splits["test"], splits["train"]
    assert predictions["labels"] == ["negative", "positive"] and predictions["label"] == test.labels
    correct = [y == p for y, p in zip(predictions["label"], predictions["prediction"])]
    assert metrics["test/acc"] == pytest.approx(sum(correct) / 16) and metrics["test/samples"] == 16
    assert metrics["prompt/positive_rate"] == pytest.approx(sum(predictions["prediction"]) / 16)
    assert (metrics["prompt/method"], metrics["prompt/shots"]) == ("chat", 2) and metrics["prompt/samples_per_sec"] > 0
    assert 0 < sum(predictions["prediction"]) < 16, predictions  # both answers occur: the order below is tested

    # The same reviews, cut as the datamodule cuts them, scored directly: the CLI's predictions, review by review.
    tokenizer = load_tokenizer(tiny_chat)
    picked = balanced_demonstrations(train.labels, 2, seed=3)
    demonstrations = list(zip(cut(tokenizer, [train.texts[i] for i in picked], 64), [train.labels[i] for i in picked]))
    prompt = ChatPrompt(tokenizer, ["negative", "positive"], QUESTION, demonstrations=demonstrations)
    scorer = ChatScorer(chat_model(tiny_chat), prompt)
    assert scorer.scores(scorer.items(cut(tokenizer, test.texts, 32))).argmax(-1).tolist() == predictions["prediction"]


def test_cli_cloze_on_an_mlm_export(tiny_mlm_export, toy_csv, tmp_path):
    result, run = run_prompt(tmp_path, f"checkpoint={tiny_mlm_export}", "method=cloze", "data.val_size=16", "data.max_length=32", f"data.path={toy_csv}")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((run / "predictions.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(predictions["prediction"]) == metrics["test/samples"] == 16 and metrics["prompt/method"] == "cloze"
    assert metrics["test/acc"] == pytest.approx(sum(y == p for y, p in zip(predictions["label"], predictions["prediction"])) / 16)


@pytest.mark.parametrize("model, args, message", [
    ("tiny_bert", ["method=cloze"], "ships no MLM head (its weights lack cls.predictions."),
    ("tiny_bert", ["method=chat"], "is a masked LM (it has a [MASK] token), not a chat decoder: use method=cloze"),
    ("tiny_chat", ["method=cloze"], "is a decoder with no [MASK] token: method=cloze needs a masked LM"),
    ("tiny_chat", ["method=cloze", "shots=2"], "is a decoder with no [MASK] token"),
    ("tiny_chat", ["method=generate"], "method=generate: choose chat"),
    ("tiny_chat", ["shots=2", "data.test_all=true"], "data.test_all=true leaves none"),
])
def test_a_model_that_does_not_fit_the_method_is_one_error_line(model, args, message, request, toy_csv, tmp_path):
    checkpoint = request.getfixturevalue(model)
    result, run = run_prompt(tmp_path, f"checkpoint={checkpoint}", "data.max_length=32", f"data.path={toy_csv}", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    if model == "tiny_bert" and "cloze" in args[0]:
        assert "python src/pretrain.py objective=mlm" in errors[0]
    assert not run.exists()  # a run that failed on its input leaves no folder
