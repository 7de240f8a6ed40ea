"""A hand-written BERT: the encoder body and its task heads, as Hugging Face computes them.

Reading order: `BertConfig`, the body's parts (`Embeddings`, `SelfAttention`, post-LN `Layer`), the `Encoder`
body (embeddings + blocks, what HF's `BertModel` computes without its pooler), then one class per head:

    BertForSequenceClassification  pooler (dense + tanh on [CLS]) -> dropout -> classifier   (B, num_labels)
    BertForTokenClassification     dropout -> classifier on every token                     (B, T, num_labels)
    BertForMaskedLM                dense -> GELU -> LayerNorm -> tied decoder on every token (B, T, vocab)

each matching the `transformers` class of the same name to ~1e-6 in fp32. Parameter names follow the HF
checkpoint, so the mapping (models/convert.py, which also translates configs and builds models from
checkpoints) is one to one, with a single structural change: query, key and value are stacked into one
`qkv` projection at load time, one matmul instead of three. This file knows nothing of Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, scaled_dot_product_attention


@dataclass
class BertConfig:
    vocab_size: int = 30522
    block_size: int = 512  # max_position_embeddings
    type_vocab_size: int = 2
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int = 3072  # intermediate_size
    activation: str = "gelu"  # gelu (erf, BERT's) or gelu_tanh
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1  # hidden_dropout_prob
    attn_dropout: float = 0.1  # attention_probs_dropout_prob
    classifier_dropout: float | None = None  # None: as `dropout`, like Hugging Face
    num_labels: int = 2
    pad_token_id: int | None = 0  # the tokenizer's; padding is read from attention_mask, this is for reference
    init_std: float = 0.02
    attention: str = "auto"  # auto: matmul attention on a CPU in bf16, else SDPA (models/attention.py); sdpa: SDPA everywhere
    # Not BERT's, but switches that isolate what the mask does (issue 12): the same weights under a decoder's
    # causal mask, and the sequence head read from another token than [CLS]. The defaults are BERT's.
    causal: bool = False  # True: each token attends to itself and the tokens before it only
    pooling: str = "cls"  # the sequence head's input: cls (the first token), mean (of the real tokens), last (the last real one)

    def __post_init__(self):
        check_choice(self.attention)
        check_pooling(self.pooling)
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}.")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise UserError(f"activation={self.activation}: choose gelu or gelu_tanh.")


@torch.no_grad()
def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The BERT / GPT-2 initialisation (gpt.py imports it). Each body applies it to itself and each head to
    the modules it adds, so a head that a checkpoint lacks starts as it would in a random model."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


POOLINGS = ("cls", "mean", "last")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"pooling={pooling}: choose cls (the first token), mean (of the real tokens) or last (the last real token).")
    return pooling


def pool(x: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, T, C) -> (B, C): the first real token, the mean of the real tokens, or the last real token, whichever
    side the padding is on (gpt.py pools with it too)."""
    if attention_mask is None:
        return {"cls": x[:, 0], "mean": x.mean(1), "last": x[:, -1]}[pooling]
    if pooling == "mean":
        m = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)
    B, T = attention_mask.shape
    positions = torch.arange(T, device=x.device)
    real = attention_mask.bool()
    # argmax returns the first maximum: the first real position, or (counting from the end) the last one.
    chosen = (real * (T - positions)).argmax(-1) if pooling == "cls" else (real * positions).argmax(-1)  # (B,)
    return x[torch.arange(B, device=x.device), chosen]


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embeddings = nn.Embedding(config.block_size, config.n_embd)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, token_type_ids=None):
        T = input_ids.size(1)
        x = self.word_embeddings(input_ids)  # (B, T, C)
        if token_type_ids is None:  # one sentence: every token is type 0, a broadcast row, not a lookup
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]  # BERT pads on the right, so positions are 0..T-1
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.n_head = config.n_head
        self.attn_dropout = config.attn_dropout
        self.attend = scaled_dot_product_attention if config.attention == "auto" else F.scaled_dot_product_attention
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)  # HF query, key, value stacked
        self.dense = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, mask):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        dropout = self.attn_dropout if self.training else 0.0
        y = self.attend(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.dense(y)


class Layer(nn.Module):
    """Post-LN: the residual sum is normalised, as in the original Transformer and every BERT checkpoint."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.n_embd, config.n_inner)
        self.output = nn.Linear(config.n_inner, config.n_embd)
        self.output_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x, mask):
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        h = F.gelu(self.intermediate(x), approximate=self.approximate)  # (B, T, n_inner)
        return self.output_norm(x + self.dropout(self.output(h)))


class Encoder(nn.Module):
    """Embeddings and encoder blocks: HF `BertModel` without its pooler. The task models below add their heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = nn.ModuleList([Layer(config) for _ in range(config.n_layer)])
        self.apply(partial(init_weights, std=config.init_std))

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None):
        """The last layer's output, (B, T, C): HF `BertModel(...).last_hidden_state` (with causal=False)."""
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):  # no padding: SDPA's unmasked path
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): every query sees every real key
        if self.config.causal:  # and only the keys up to itself. Right padding: a real token never sees a pad
            T = input_ids.size(1)
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
            mask = causal if mask is None else mask & causal  # (B, 1, T, T) or (T, T)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder:
            x = layer(x, mask)
        return x


def classifier_dropout(config: BertConfig) -> float:
    """HF's rule for both classification heads: `classifier_dropout`, or the hidden dropout when unset."""
    return config.dropout if config.classifier_dropout is None else config.classifier_dropout


class BertForSequenceClassification(Encoder):
    """One label per sequence, from the pooled [CLS] token: pooler -> dropout -> classifier. `pooling` feeds
    the pooler the mean or the last real token instead (under a causal mask, the only one that read everything)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.pooler = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        for head in (self.pooler, self.classifier):
            init_weights(head, config.init_std)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Class logits, (B, num_labels), from the pooled [CLS] token (or the `pooling` one)."""
        x = self.hidden_states(input_ids, attention_mask, token_type_ids)
        read = x[:, 0] if self.config.pooling == "cls" else pool(x, attention_mask, self.config.pooling)  # (B, C); BERT pads right
        pooled = torch.tanh(self.pooler(read))  # (B, C)
        return self.classifier(self.dropout(pooled))


class BertForTokenClassification(Encoder):
    """One label per token (POS tags, named entities): dropout -> classifier on every hidden state, no pooler."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        init_weights(self.classifier, config.init_std)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Label logits at every position, (B, T, num_labels): HF `BertForTokenClassification(...).logits`.
        A pad position gets logits too; the loss must skip it (label -100)."""
        x = self.hidden_states(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        return self.classifier(self.dropout(x))


class MaskedLMHead(nn.Module):
    """HF's `cls.predictions`: dense -> GELU -> LayerNorm, then a score for each word of the vocabulary
    from the word-embedding table (the decoder is tied to it, as in every BERT checkpoint) plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.LayerNorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x, word_embeddings):
        x = self.LayerNorm(F.gelu(self.dense(x), approximate=self.approximate))  # (..., C)
        return F.linear(x, word_embeddings, self.bias)  # (..., vocab)


class BertForMaskedLM(Encoder):
    """The encoder with BERT's masked-LM head: HF `BertForMaskedLM`, what BERT is pretrained with."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.mlm_head = MaskedLMHead(config)
        self.mlm_head.apply(partial(init_weights, std=config.init_std))

    def lm_logits(self, x):
        """Vocabulary logits for hidden states x (..., C). Pretraining passes only the masked positions:
        the (..., vocab) output is the largest tensor of the step, and the other 85% would be thrown away."""
        return self.mlm_head(x, self.embeddings.word_embeddings.weight)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Vocabulary logits at every position, (B, T, vocab): HF `BertForMaskedLM(...).logits`."""
        return self.lm_logits(self.hidden_states(input_ids, attention_mask, token_type_ids))
