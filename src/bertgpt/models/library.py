"""Library backbones: any Hugging Face `AutoModelForSequenceClassification` (BERT, GPT-2, Llama, ...)."""

from __future__ import annotations

import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, register_with_transformers
from bertgpt.models.hub import from_pretrained

# The "newly initialised: classifier.weight" report is expected when fine-tuning; keep real errors only.
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def load_tokenizer(checkpoint: str):
    """The checkpoint's own fast tokenizer; decoders without a pad token pad with their end-of-text token."""
    tokenizer = from_pretrained(AutoTokenizer, checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Where each family keeps its attention-probability dropout (BERT, GPT-2, Llama).
ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")


def build(
    checkpoint: str, head: str = "sequence", num_labels: int = 2, pretrained: bool = True, attn_dropout: float | None = None, attention: str = "auto"
):
    """A sequence classifier on `checkpoint`: BERT pools `[CLS]`, decoders read the last non-pad token.

    `pretrained=False` keeps the architecture and tokenizer but starts from random weights. `attn_dropout`
    replaces the checkpoint's attention dropout (None keeps it). `attention`: auto (matmul attention on a CPU,
    SDPA on a GPU: `bertgpt.models.attention`) or sdpa (transformers' own SDPA everywhere). The same two keys
    set our own models.
    """
    implementation = register_with_transformers() if check_choice(attention) == "auto" else "sdpa"
    pad_token_id = load_tokenizer(checkpoint).pad_token_id
    config = from_pretrained(AutoConfig, checkpoint, num_labels=num_labels, pad_token_id=pad_token_id)
    if attn_dropout is not None:
        for field in ATTENTION_DROPOUT_FIELDS:
            if hasattr(config, field):
                setattr(config, field, attn_dropout)
    heads = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}
    if head not in heads:
        raise UserError(f"head={head}: choose sequence or token.")
    factory = heads[head]
    if not pretrained:
        return factory.from_config(config, attn_implementation=implementation)
    return from_pretrained(factory, checkpoint, config=config, attn_implementation=implementation)
