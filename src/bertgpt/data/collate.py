"""Padding a batch of token ids: no Lightning here, so that prediction (bertgpt.inference) starts fast."""

from __future__ import annotations

import torch

IGNORE = -100  # cross_entropy's ignore_index: a position with no label (padding, a word's later subwords)


class PadCollator:
    """Dynamic padding: each batch is padded to its own longest review, not to max_length.

    `multiple` rounds that width up (64: at most 8 widths at 512 tokens). A GPU pays for every new width: cuDNN
    attention plans and torch.compile graphs are built per shape, and a plan costs more than the step.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", multiple: int = 1):
        self.pad_token_id, self.padding_side, self.multiple = pad_token_id, padding_side, multiple

    @classmethod
    def for_tokenizer(cls, tokenizer, multiple: int = 1) -> PadCollator:
        """Padding with the tokenizer's pad token on its side: how every datamodule, and predict, pads."""
        return cls(tokenizer.pad_token_id, tokenizer.padding_side, multiple)

    def __call__(self, items: list[tuple[torch.Tensor, int | torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = -(-max(len(ids) for ids, _ in items) // self.multiple) * self.multiple
        per_token = torch.is_tensor(items[0][1])
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long) if per_token else None
        for row, (ids, label) in enumerate(items):
            span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = ids
            attention_mask[row, span] = 1
            if per_token:
                labels[row, span] = label
        if not per_token:
            labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
