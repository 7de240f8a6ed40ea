"""Language modelling: pretraining our own models from random weights, for a controlled BERT-vs-GPT experiment.

`objective=mlm` trains our BERT (models/bert.py, `BertForMaskedLM`) to fill in masked tokens;
`objective=clm` trains our GPT (models/gpt.py, GPT-2 layout) to predict the next token. Everything else is
shared: the tokenizer, the size, the token blocks and their order, the optimizer and the budget. The run
ends by exporting a Hugging Face folder that `src/train.py model=bert_scratch|gpt_scratch
model.net.checkpoint=<run>/export` fine-tunes, and the library's `BertForMaskedLM` / `GPT2LMHeadModel` load.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from bertgpt.data.collate import IGNORE
from bertgpt.errors import UserError
from bertgpt.models.bert import BertConfig, BertForMaskedLM
from bertgpt.models.gpt import GPT, GPTConfig
from bertgpt.models.library import load_tokenizer
from bertgpt.training.optim import adamw_with_schedule, check_finite, check_schedule

OBJECTIVES = {"mlm": "our BERT, masked tokens", "clm": "our GPT, next token"}


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_token_id: int, vocab_size: int,
                mask_prob: float = 0.15, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019, 3.1): each token that is not `special` (B, T) is chosen with
    probability `mask_prob`; a chosen one becomes [MASK] 80% of the time, a random token 10%, and stays
    itself 10% (so the model cannot learn that only [MASK] positions matter).

    Returns the corrupted ids and the labels: the original token where chosen, IGNORE elsewhere. Draws
    from `generator` (on its device) when given, else from the global RNG on the ids' device.
    """
    device = generator.device if generator is not None else input_ids.device

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device).to(input_ids.device)

    chosen = (uniform() < mask_prob) & ~special
    fate = uniform()  # one draw splits the chosen tokens 80 / 10 / 10
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device).to(input_ids.device)
    inputs = input_ids.masked_fill(chosen & (fate < 0.8), mask_token_id)
    inputs = torch.where(chosen & (fate >= 0.8) & (fate < 0.9), random_ids, inputs)
    return inputs, input_ids.masked_fill(~chosen, IGNORE)


def next_token_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels (B, T) for next-token prediction: position t predicts token t + 1; the last has no target."""
    return F.pad(input_ids[:, 1:], (0, 1), value=IGNORE)


class LanguageModel(L.LightningModule):
    """Pretrains `objective`'s model from random weights at the given size; the loss is cross-entropy over
    the positions that have a target (the masked ones for mlm, all but the last for clm)."""

    def __init__(
        self,
        objective: str,
        tokenizer: str,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        n_inner: int = 1024,
        block_size: int = 128,
        dropout: float = 0.1,
        mask_prob: float | None = 0.15,
        lr: float = 5e-4,
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_ratio: float = 0.05,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise UserError(f"objective={objective}: choose one of {', '.join(f'{k} ({v})' for k, v in OBJECTIVES.items())}.")
        if objective == "mlm" and not (mask_prob and 0 < mask_prob < 1):
            raise UserError(f"objective.mask_prob={mask_prob} must be between 0 and 1 (BERT's is 0.15).")
        check_schedule("linear", warmup_ratio)
        self.save_hyperparameters(logger=False)
        self.tokenizer = load_tokenizer(tokenizer)
        if objective == "mlm" and self.tokenizer.mask_token_id is None:
            raise UserError(f"the tokenizer of {tokenizer} has no mask token: objective=mlm needs one ([MASK]).")
        sizes = dict(vocab_size=len(self.tokenizer), block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     n_inner=n_inner, dropout=dropout, attn_dropout=dropout, pad_token_id=self.tokenizer.pad_token_id)
        if objective == "mlm":
            self.net = BertForMaskedLM(BertConfig(**sizes))
        else:  # GPTConfig's defaults are the GPT-2 layout; GPT has no classification head (fine-tuning adds a fresh one)
            self.net = GPT(GPTConfig(**sizes))
        self.register_buffer("special_ids", torch.tensor(self.tokenizer.all_special_ids), persistent=False)
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.last_val_step = -1

    def targets(self, input_ids: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input and the labels for a block of token ids (B, T)."""
        if self.hparams.objective == "clm":
            return input_ids, next_token_labels(input_ids)
        special = torch.isin(input_ids, self.special_ids)
        return mask_tokens(input_ids, special, self.tokenizer.mask_token_id, len(self.tokenizer), self.hparams.mask_prob, generator)

    def step(self, input_ids: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean loss, correct predictions and the number of targets in a batch of blocks (B, T)."""
        inputs, labels = self.targets(input_ids, generator)
        chosen = labels != IGNORE  # (B, T)
        x = self.net.hidden_states(inputs)  # (B, T, C); the blocks are full: no padding mask
        logits = self.net.lm_logits(x[chosen]).float()  # (N, vocab): the LM head only where there is a target
        targets = labels[chosen]  # (N,)
        n = targets.numel()
        loss = F.cross_entropy(logits, targets, reduction="sum") / max(n, 1)  # 0, not NaN, if nothing was masked
        check_finite(loss, self.global_step)
        return loss, (logits.argmax(-1) == targets).sum(), n

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.step(batch)  # masks from the global RNG, seeded by seed_everything
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        # The same masks at every validation: val/loss then moves only because the model does.
        self.val_rng = torch.Generator().manual_seed(0)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss, correct, n = self.step(batch, self.val_rng)
        self.val_loss(loss, n)  # weighted by targets: a mean over tokens, not over batches
        self.val_acc(correct / max(n, 1), n)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=len(batch))
        self.log("val/token_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(batch))

    def on_validation_epoch_end(self) -> None:
        self.log("val/ppl", torch.exp(self.val_loss.compute()), sync_dist=True)
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step

    def configure_optimizers(self):
        """AdamW without weight decay on biases and norms (BERT's recipe, as fine-tuning), a linear warmup over
        warmup_ratio of trainer.max_steps, then a linear decay to 0 at the end of the budget."""
        hp = self.hparams
        return adamw_with_schedule(self, self.trainer.max_steps, hp.lr, hp.eps, hp.weight_decay, hp.betas, hp.warmup_ratio)
