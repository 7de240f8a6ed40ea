"""Library backbones: any Hugging Face `AutoModelFor{Sequence,Token}Classification` (BERT, GPT-2, Llama, ...)."""

from __future__ import annotations

from collections.abc import Mapping

import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, register_with_transformers
from bertgpt.models.hub import from_pretrained

# The "newly initialised: classifier.weight" report is expected when fine-tuning; keep real errors only.
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def load_tokenizer(checkpoint: str, **options):
    """The checkpoint's own fast tokenizer (`options` go to `from_pretrained`); decoders without a pad token pad
    with their end-of-text token."""
    tokenizer = from_pretrained(AutoTokenizer, checkpoint, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Where each family keeps its attention-probability dropout (BERT, GPT-2, Llama), and its hidden-layer dropout
# (Llama has none).
ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")
HIDDEN_DROPOUT_FIELDS = ("hidden_dropout_prob", "resid_pdrop", "embd_pdrop")


HEADS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}


def choose_head(heads: Mapping[str, type], head: str) -> type:
    """`heads[head]`: what builds that head (here, and for our own models in convert.py), or a UserError."""
    if head not in heads:
        raise UserError(f"head={head}: choose sequence (one label per text) or token (one label per token).")
    return heads[head]


def build(
    checkpoint: str, head: str = "sequence", num_labels: int = 2, pretrained: bool = True,
    attn_dropout: float | None = None, attention: str = "auto", dropout: float | None = None,
):
    """A classifier on `checkpoint` with a fresh `num_labels` head. head="sequence": one label per text, BERT
    pools `[CLS]` and decoders read the last non-pad token, logits (B, num_labels); head="token": one label
    per token, logits (B, T, num_labels).

    `pretrained=False` keeps the architecture and tokenizer but starts from random weights. `attn_dropout`
    replaces the checkpoint's attention dropout and `dropout` its hidden-layer dropout (None keeps each).
    `attention`: auto (matmul attention on a CPU in bf16, SDPA in fp32 and on a GPU: `bertgpt.models.attention`) or sdpa
    (transformers' own SDPA everywhere). The same keys set our own models (`bertgpt.models.convert.build_bert` /
    `build_gpt`).
    """
    auto_model = choose_head(HEADS, head)
    implementation = register_with_transformers() if check_choice(attention) == "auto" else "sdpa"
    pad_token_id = load_tokenizer(checkpoint).pad_token_id
    # use_cache=False: a classifier never generates, and a decoder that kept its keys and values would find the first
    # pass's in its cache when activation checkpointing runs a block again (`bertgpt.training.strategies.recompute_blocks`).
    config = from_pretrained(AutoConfig, checkpoint, num_labels=num_labels, pad_token_id=pad_token_id, use_cache=False)
    for fields, value in ((ATTENTION_DROPOUT_FIELDS, attn_dropout), (HIDDEN_DROPOUT_FIELDS, dropout)):
        if value is None:
            continue
        for field in fields:
            if hasattr(config, field):
                setattr(config, field, value)
    if not pretrained:
        return auto_model.from_config(config, attn_implementation=implementation)
    # A checkpoint fine-tuned for another number of labels (or another head) gets a fresh head, as ours do.
    return from_pretrained(auto_model, checkpoint, config=config, attn_implementation=implementation, ignore_mismatched_sizes=True)
