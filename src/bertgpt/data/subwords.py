"""Labels on subwords for tagging: the tokenizer set to tokenize split sentences, and each word's first subword.

Without Lightning, as data/collate.py: predicting tags (bertgpt.inference) needs these and not the datamodule.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from bertgpt.data import tokenize
from bertgpt.data.collate import IGNORE
from bertgpt.errors import UserError
from bertgpt.models.library import load_tokenizer


def load_tagging_tokenizer(checkpoint: str):
    """The checkpoint's fast tokenizer, set to tokenize each word of a split sentence as it is mid-sentence.

    Byte-level BPE (GPT-2, SmolLM2) marks a word's leading space in its first piece ("Ġdog" vs "dog"): given words
    one by one, it must add that space to each. `add_prefix_space=True` does so for GPT-2's tokenizer class but
    not for the generic one SmolLM2 loads as, so the backend's pre-tokenizer is set too. WordPiece ignores both.
    """
    tokenizer = load_tokenizer(checkpoint, add_prefix_space=True)
    if not tokenizer.is_fast:
        raise UserError(f"{checkpoint}: tagging needs a fast (Rust) tokenizer, to map subwords to words; this one is not.")
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if prefix_every_word(state.get("pre_tokenizer")):
        tokenizer.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(state)).pre_tokenizer
    return tokenizer


def prefix_every_word(pre_tokenizer: dict | None) -> bool:
    """Turns on the leading space of every byte-level / metaspace step of a serialized pre-tokenizer, in place;
    whether any step changed."""
    if pre_tokenizer is None:
        return False
    kind = pre_tokenizer["type"]
    if kind == "Sequence":
        changed = [prefix_every_word(step) for step in pre_tokenizer["pretokenizers"]]  # every step, not the first only
        return any(changed)
    if kind == "ByteLevel" and not pre_tokenizer["add_prefix_space"]:
        pre_tokenizer["add_prefix_space"] = True
        return True
    if kind == "Metaspace" and pre_tokenizer.get("prepend_scheme") != "always":  # sentencepiece's "▁dog"
        pre_tokenizer["prepend_scheme"] = "always"
        return True
    return False


def encode_sentences(tokenizer, sentences: list[list[str]], tags: list[list[int]] | None, max_length: int,
                     label_all_subwords: bool = False) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Token ids with the model's special tokens, their labels, and for each token the index of its word where it
    is that word's first subword (else -1), in one batched call of the fast tokenizer.

    Labels follow Hugging Face's run_ner.py: a word's first subword carries its tag id, its later subwords and the
    special tokens get -100 (`label_all_subwords`: every subword carries its word's tag). Without `tags`, every
    label is -100. A sentence longer than `max_length` tokens is cut there: the words past the cut lose their labels.
    """
    prefix, suffix = tokenize.special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    encoded = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    ids, labels, first_word = [], [], []
    for i in range(len(sentences)):
        word_ids = encoded.word_ids(i)[:budget]  # no None: the special tokens are added below
        sentence_tags = tags[i] if tags is not None else None
        firsts = [w if j == 0 or w != word_ids[j - 1] else -1 for j, w in enumerate(word_ids)]
        if sentence_tags is None:
            token_labels = [IGNORE] * len(word_ids)
        elif label_all_subwords:
            token_labels = [sentence_tags[w] for w in word_ids]
        else:
            token_labels = [sentence_tags[w] if f >= 0 else IGNORE for w, f in zip(word_ids, firsts)]
        ids.append(prefix + encoded["input_ids"][i][:budget] + suffix)
        labels.append([IGNORE] * len(prefix) + token_labels + [IGNORE] * len(suffix))
        first_word.append([-1] * len(prefix) + firsts + [-1] * len(suffix))
    return ids, labels, first_word
