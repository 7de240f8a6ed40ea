"""Sentiment without fine-tuning: ask a chat decoder (zero- or k-shot), or fill a masked LM's [MASK] (a cloze).

    python src/prompt.py                                          # SmolLM2-135M-Instruct, zero-shot
    python src/prompt.py shots=4 seed=1                           # 4 demonstrations (2 per label) before each review
    python src/prompt.py method=cloze checkpoint=logs/pretrain/runs/<run>/export   # "<review> It was [MASK]."

The reviews are the test split `src/train.py` builds with the same data.* options (the held-out slice), in its
order, each cut to data.max_length tokens as the datamodule cuts it: predictions.json lines up review by review
with a fine-tuned run's, for stats.paired_bootstrap.

- chat: the chat template's user turn asks the question about the review and the assistant turn is opened; the
  score of a label is the next-token logit of its word's first token there (no generation). k-shot puts `shots`
  demonstrations (training reviews, half of each label, cut to `demo_tokens`) before it as earlier user /
  assistant turns. That prefix is the same for every review: its key/value cache is computed once and every
  batch continues from it, right-padded after it (equal to running each full prompt: tests/test_prompting.py).
- cloze: "<review> It was [MASK]." through a masked LM (our src/pretrain.py objective=mlm export); the score of
  a label is the logit of its word ("bad" / "good") at [MASK]. Zero-shot only: a BERT has no room for examples.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence

import hydra
import numpy as np
import torch

from bertgpt.data import tokenize
from bertgpt.data.collate import PadCollator
from bertgpt.errors import UserError
from bertgpt.models.attention import register_with_transformers
from bertgpt.models.hub import from_pretrained

log = logging.getLogger(__name__)

METHODS = ("chat", "cloze")
MLM_HINT = "Ask our MLM-pretrained BERT instead: python src/pretrain.py objective=mlm, then checkpoint=logs/pretrain/runs/<run>/export"


def balanced_demonstrations(labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """`shots` indices into a training split, half of each label (which label gets an odd one out is drawn too),
    in a random order: all drawn from `numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    first = int(rng.integers(2))
    picked = []
    for label, count in ((first, (shots + 1) // 2), (1 - first, shots // 2)):
        pool = np.flatnonzero(labels == label)
        if len(pool) < count:
            raise UserError(f"shots={shots} needs {count} training reviews of label {label}, but the training split has {len(pool)}: use fewer shots or more data.")
        picked += rng.choice(pool, count, replace=False).tolist()
    return [picked[i] for i in rng.permutation(len(picked))]


def right_padded(items: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = PadCollator(pad_token_id, "right")([(torch.tensor(ids), 0) for ids in items])
    return batch["input_ids"], batch["attention_mask"]


# ----- chat: a decoder's next token after its chat template ------------------------------------------------------


class ChatPrompt:
    """The chat prompts of one run, as token ids: `prefix` (an optional system turn and the demonstrations,
    the same for every review) and `item(review)`, what follows it: the review's user turn and the opened
    assistant turn. `label_ids`: the first token of each label word's answer, as the template would write it."""

    def __init__(self, tokenizer, words: Sequence[str], question: str, system: str | None = None,
                 demonstrations: Sequence[tuple[str, int]] = ()):
        self.tokenizer, self.question = tokenizer, question
        context = [{"role": "system", "content": system}] if system else []
        for text, label in demonstrations:
            context += [self.user(text), {"role": "assistant", "content": words[label]}]
        self.context = context
        prefix = self.render(context) if context else ""
        if not self.render(context + [self.user("x")], True).startswith(prefix):  # a template that rewrites earlier turns
            log.warning("This chat template renders the earlier turns differently once a review follows: no prefix cache.")
            prefix = ""
        self.prefix_text, self.prefix = prefix, self.encode(prefix)
        self.label_ids = self.first_answer_tokens(words)

    def user(self, review: str) -> dict:
        return {"role": "user", "content": f"{self.question}\n\n{review}"}

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []  # the template has its own

    def item(self, review: str) -> list[int]:
        return self.encode(self.render(self.context + [self.user(review)], True)[len(self.prefix_text):])

    def first_answer_tokens(self, words: Sequence[str]) -> list[int]:
        opened = self.encode(self.render(self.context + [self.user("x")], True))
        ids = []
        for word in words:
            answered = self.encode(self.render(self.context + [self.user("x"), {"role": "assistant", "content": word}]))
            if answered[: len(opened)] != opened or len(answered) == len(opened):
                raise UserError(f"the chat template does not write an answer {word!r} after its opened assistant turn: this model cannot be scored with method=chat.")
            ids.append(answered[len(opened)])
        if len(set(ids)) < len(ids):
            raise UserError(f"words={list(words)}: the answers begin with the same token {self.tokenizer.decode(ids[:1])!r}; pick words whose first tokens differ.")
        return ids


class ChatScorer:
    """A causal LM's label-word logits at the assistant's first position, the prefix read from its cache."""

    def __init__(self, model, prompt: ChatPrompt):
        self.prompt, self.device = prompt, next(model.parameters()).device
        self.body, self.head = model.eval().base_model, model.get_output_embeddings()
        self.cache = None
        if prompt.prefix:
            with torch.no_grad():
                self.cache = self.body(input_ids=torch.tensor([prompt.prefix], device=self.device), use_cache=True).cache

    def items(self, reviews: list[str]) -> list[list[int]]:
        return [self.prompt.item(review) for review in reviews]

    @torch.no_grad()
    def scores(self, items: list[list[int]], cached: bool = True) -> torch.Tensor:
        """(B, 2) logits: the items after the prefix's cache (`cached`), or each whole prompt run from its start."""
        past = len(self.prompt.prefix) if cached and self.cache is not None else 0
        if not past:
            items = [self.prompt.prefix + x for x in items]
        ids, mask = (t.to(self.device) for t in right_padded(items, self.prompt.tokenizer.pad_token_id))
        options = {}
        if past:
            cache = copy.deepcopy(self.cache)  # each forward appends to the cache it is given
            cache.batch_repeat_interleave(len(items))
            options = dict(cache=cache, use_cache=True,
                           position_ids=torch.arange(past, past + ids.size(1), device=self.device).expand(len(items), -1))
            mask = torch.cat([mask.new_ones(len(items), past), mask], dim=1)
        hidden = self.body(input_ids=ids, attention_mask=mask, **options).last_hidden_state
        last = hidden[torch.arange(len(items), device=self.device), mask[:, past:].sum(1) - 1]  # each item's last real token
        return self.head(last)[:, self.prompt.label_ids].float()


# ----- cloze: a masked LM's word at [MASK] -------------------------------------------------------------------------


class ClozeScorer:
    """A masked LM's logits at [MASK] for one word per label, the review spliced into `template` as token ids so
    that the whole prompt keeps to `max_length` tokens."""

    def __init__(self, model, tokenizer, words: Sequence[str], template: str, max_length: int, truncation: str = "head"):
        if template.count("{review}") != 1 or template.count("{mask}") != 1:
            raise UserError(f"cloze.template={template!r} must hold {{review}} and {{mask}} once each, e.g. '{{review}} It was {{mask}}.'")
        self.model, self.tokenizer, self.truncation = model.eval(), tokenizer, truncation
        self.device = next(model.parameters()).device
        before, after = (tokenizer(part.format(mask=tokenizer.mask_token).strip(), add_special_tokens=False)["input_ids"]
                         for part in template.split("{review}"))
        self.before, self.after = before, after
        self.budget = max_length - len(before) - len(after)
        if self.budget < 8:
            raise UserError(f"data.max_length={max_length} leaves {self.budget} tokens for the review beside cloze.template: raise data.max_length.")
        self.word_ids = []
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise UserError(f"cloze.words: {word!r} is {len(ids)} tokens in this vocabulary; a cloze word must be one token (e.g. good, bad).")
            self.word_ids += ids
        if len(set(self.word_ids)) < 2:
            raise UserError(f"cloze.words={list(words)} are the same token: pick two different words.")
        log.info("Cloze words at [MASK]: %s", ", ".join(f"{w!r} (id {i})" for w, i in zip(words, self.word_ids)))

    def items(self, reviews: list[str]) -> list[list[int]]:
        start, end = tokenize.special_tokens(self.tokenizer)
        encoded = tokenize.encode(self.tokenizer, reviews, self.budget, self.truncation)
        return [start + self.before + ids[len(start) : len(ids) - len(end)] + self.after + end for ids in encoded]

    @torch.no_grad()
    def scores(self, items: list[list[int]]) -> torch.Tensor:
        ids, mask = (t.to(self.device) for t in right_padded(items, self.tokenizer.pad_token_id))
        at_mask = (ids == self.tokenizer.mask_token_id).int().argmax(1)  # the template's [MASK]; a review's own come later
        rows = torch.arange(len(items), device=self.device)
        head = next((getattr(self.model, name) for name in ("cls", "lm_head") if hasattr(self.model, name)), None)  # BERT's, RoBERTa's
        if head is None:
            return self.model(input_ids=ids, attention_mask=mask).logits[rows, at_mask][:, self.word_ids].float()
        # The head on the [MASK] positions only: on every position it would be B x T x 30k logits.
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hidden[rows, at_mask])[:, self.word_ids].float()


# ----- loading ---------------------------------------------------------------------------------------------------


def check_method(cfg, tokenizer) -> None:
    """The method fits the model and the options: a chat template for chat, a [MASK] token for cloze."""
    if cfg.method not in METHODS:
        raise UserError(f"method={cfg.method}: choose chat (a decoder with a chat template) or cloze (a masked LM such as our MLM-pretrained BERT).")
    if int(cfg.shots) < 0:
        raise UserError(f"shots={cfg.shots}: the number of demonstrations is 0 (zero-shot) or more.")
    if int(cfg.shots) and int(cfg.demo_tokens) < 8:
        raise UserError(f"demo_tokens={cfg.demo_tokens}: a demonstration needs at least 8 tokens; 64 keeps the prompt short.")
    if cfg.method == "chat" and not getattr(tokenizer, "chat_template", None):
        kind = "a masked LM (it has a [MASK] token), not a chat decoder: use method=cloze" if tokenizer.mask_token else "a model without a chat template"
        raise UserError(f"checkpoint={cfg.checkpoint} is {kind}; method=chat needs a decoder with a chat template, such as checkpoint=smollm2-135m.")
    if cfg.method == "cloze":
        if tokenizer.mask_token is None:
            raise UserError(f"checkpoint={cfg.checkpoint} is a decoder with no [MASK] token: method=cloze needs a masked LM. Use method=chat, or {MLM_HINT}.")
        if int(cfg.shots):
            raise UserError(f"shots={cfg.shots}: method=cloze is zero-shot (shots=0); demonstrations go to a decoder with method=chat.")


def load_model(cfg, device: torch.device):
    """The checkpoint's causal LM (chat) or masked LM (cloze), in eval mode on `device`. A masked LM must bring its
    own MLM head: a fresh one would score [MASK] at random."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    implementation = register_with_transformers()  # the attention the fine-tuned models run (matmul on a CPU)
    if cfg.method == "chat":
        return from_pretrained(AutoModelForCausalLM, cfg.checkpoint, attn_implementation=implementation).to(device).eval()
    model, info = from_pretrained(AutoModelForMaskedLM, cfg.checkpoint, attn_implementation=implementation, output_loading_info=True)
    if info["missing_keys"]:
        raise UserError(f"checkpoint={cfg.checkpoint} ships no MLM head (its weights lack {sorted(info['missing_keys'])[0]} and "
                        f"{len(info['missing_keys']) - 1} more), so method=cloze cannot read [MASK]. {MLM_HINT}.")
    return model.to(device).eval()


def build_scorer(cfg, model, tokenizer, data_hparams, train_split):
    if cfg.method == "cloze":
        return ClozeScorer(model, tokenizer, list(cfg.cloze.words), cfg.cloze.template, data_hparams.max_length, data_hparams.truncation)
    demonstrations = []
    if int(cfg.shots):
        if train_split is None:
            raise UserError(f"shots={cfg.shots} draws its demonstrations from the training split, and data.test_all=true leaves none: use shots=0.")
        picked = balanced_demonstrations(train_split.labels, int(cfg.shots), int(cfg.seed))
        texts = cut(tokenizer, [train_split.texts[i] for i in picked], int(cfg.demo_tokens))
        demonstrations = [(text, train_split.labels[i]) for text, i in zip(texts, picked)]
    prompt = ChatPrompt(tokenizer, list(cfg.words), cfg.question, cfg.system, demonstrations)
    log.info("Answer tokens at the assistant's first position: %s; %s",
             ", ".join(f"{w!r} -> {tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for w, i in zip(cfg.words, prompt.label_ids)),
             f"a prefix of {len(prompt.prefix)} tokens ({len(demonstrations)} demonstrations), its cache computed once"
             if prompt.prefix else "no prefix shared by every review to cache")
    return ChatScorer(model, prompt)


def cut(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> list[str]:
    """Each text as the datamodule's token ids of it read back: cleaned of IMDB's markup and cut to `max_length`
    tokens (`head_tail`: its head and tail) as training cuts it."""
    encoded = tokenize.encode(tokenizer, texts, max_length, truncation)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded]


# ----- the run -----------------------------------------------------------------------------------------------------


def score_all(scorer, items: list[list[int]], batch_size: int, log_every: float = 30.0) -> torch.Tensor:
    """(N, 2) scores in the items' order, batched longest first (each batch pads least, and a batch that does
    not fit fails at once), with a progress line every `log_every` seconds."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    scores = torch.empty(len(items), 2)
    started = last = time.monotonic()
    for done in range(0, len(order), batch_size):
        rows = order[done : done + batch_size]
        scores[rows] = scorer.scores([items[i] for i in rows]).cpu()
        if time.monotonic() - last >= log_every:
            last = time.monotonic()
            log.info("%d / %d reviews, %.2f reviews/s", done + len(rows), len(items), (done + len(rows)) / (last - started))
    return scores


def metrics_of(labels: list[int], predictions: list[int]) -> dict[str, float]:
    from bertgpt.tasks.classification import binary_or_macro_f1

    y, p = torch.tensor(labels), torch.tensor(predictions)
    return {"test/acc": (y == p).float().mean().item(), "test/f1": binary_or_macro_f1(2)(p, y).item(),
            "test/samples": len(y), "prompt/positive_rate": p.float().mean().item()}


def main(cfg) -> dict:
    """src/prompt.py: every test review scored, predictions.json and metrics.json in the run folder."""
    from bertgpt.experiments.stats import bootstrap_accuracy
    from bertgpt.files import write_text
    from bertgpt.pipeline import write_metrics

    if len(cfg.words) != 2 or len(cfg.cloze.words) != 2:
        raise UserError(f"words={list(cfg.words)} / cloze.words={list(cfg.cloze.words)}: one word per label, negative first, e.g. [negative,positive] / [bad,good].")
    datamodule = hydra.utils.instantiate(cfg.data)  # as src/train.py builds it: the same split for the same data.*
    tokenizer = datamodule.tokenizer
    check_method(cfg, tokenizer)
    splits = datamodule.raw_splits()
    test, hp = splits["test"], datamodule.hparams
    log.info("Prompting %s (method=%s, shots=%d) on %s", cfg.checkpoint, cfg.method, cfg.shots, datamodule.test_origin)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg, device)
    started = time.monotonic()
    scorer = build_scorer(cfg, model, tokenizer, hp, splits.get("train"))
    reviews = test.texts if cfg.method == "cloze" else cut(tokenizer, test.texts, hp.max_length, hp.truncation)
    scores = score_all(scorer, scorer.items(reviews), int(hp.eval_batch_size), float(cfg.log_every_s))
    seconds = time.monotonic() - started

    predictions = scores.argmax(-1).tolist()
    output_dir = cfg.paths.output_dir
    table = {"labels": list(datamodule.labels), "label": list(test.labels), "prediction": predictions}  # SequenceClassifier's
    write_text(f"{output_dir}/predictions.json", json.dumps(table) + "\n")
    metrics = {**metrics_of(test.labels, predictions), "test/data": datamodule.test_origin, "checkpoint": str(cfg.checkpoint),
               "prompt/method": cfg.method, "prompt/shots": int(cfg.shots), "prompt/seconds": seconds,
               "prompt/samples_per_sec": len(predictions) / seconds}
    write_metrics(metrics, output_dir)
    interval = bootstrap_accuracy(np.equal(test.labels, predictions))
    log.info("%d reviews in %.1f s (%.2f reviews/s): accuracy %.4f (95%% bootstrap interval %.4f-%.4f), F1 %.4f, %.1f%% predicted positive",
             len(predictions), seconds, metrics["prompt/samples_per_sec"], metrics["test/acc"], interval.low, interval.high,
             metrics["test/f1"], 100 * metrics["prompt/positive_rate"])
    for name in ("test/acc", "test/f1", "prompt/positive_rate", "prompt/samples_per_sec"):
        print(f"{name}: {metrics[name]:.4f}")
    return metrics
