"""A hand-written BERT that loads Hugging Face BERT checkpoints and exports its own.

`Bert` computes what `transformers.BertForSequenceClassification` computes (to ~1e-6 in fp32):
embeddings -> post-LN encoder blocks -> pooler (dense + tanh on [CLS]) -> dropout -> classifier.
`BertForMaskedLM` puts BERT's pretraining head on the same encoder instead: what
`transformers.BertForMaskedLM` computes. Names follow the Hugging Face checkpoint; `hf_names` below is
the whole mapping, read one way to load and the other way to export. The one structural change is that
query, key and value are stacked into one `qkv` projection at load time: one matmul instead of three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertgpt.errors import UserError
from bertgpt.models.attention import check_choice, scaled_dot_product_attention
from bertgpt.models.convert import (
    build_pretrained,
    init_weights,
    load_mapped,
    make_config,
    unmap,
)

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}  # HF hidden_act -> ours


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
    attention: str = "auto"  # auto: matmul attention on a CPU, SDPA on a GPU (models/attention.py); sdpa: SDPA everywhere

    def __post_init__(self):
        check_choice(self.attention)
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}.")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise UserError(f"activation={self.activation}: choose gelu or gelu_tanh.")

    @classmethod
    def from_hf(cls, hf, **overrides) -> "BertConfig":
        if hf.model_type != "bert" or getattr(hf, "position_embedding_type", "absolute") != "absolute":
            raise UserError(f"bert.py loads BERT checkpoints with absolute positions, not {hf.model_type}.")
        act = ACTIVATIONS.get(hf.hidden_act)
        if act is None:
            raise UserError(f"hidden_act={hf.hidden_act} is not supported by bert.py (gelu variants only).")
        fields = dict(
            vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
            n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads, n_embd=hf.hidden_size, n_inner=hf.intermediate_size,
            activation=act, layer_norm_eps=hf.layer_norm_eps, dropout=hf.hidden_dropout_prob,
            attn_dropout=hf.attention_probs_dropout_prob, classifier_dropout=getattr(hf, "classifier_dropout", None),
            num_labels=hf.num_labels, pad_token_id=hf.pad_token_id, init_std=hf.initializer_range,
        )
        return make_config(cls, fields, overrides)

    def to_hf(self, **extra):
        """The Hugging Face `BertConfig` of this model (the inverse of `from_hf`), for exporting it."""
        from transformers import BertConfig as HFBertConfig

        return HFBertConfig(
            vocab_size=self.vocab_size, max_position_embeddings=self.block_size, type_vocab_size=self.type_vocab_size,
            num_hidden_layers=self.n_layer, num_attention_heads=self.n_head, hidden_size=self.n_embd, intermediate_size=self.n_inner,
            hidden_act="gelu" if self.activation == "gelu" else "gelu_new", layer_norm_eps=self.layer_norm_eps,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.attn_dropout,
            classifier_dropout=self.classifier_dropout, pad_token_id=self.pad_token_id, initializer_range=self.init_std, **extra,
        )


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

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None):
        """The last layer's output, (B, T, C): HF `BertModel(...).last_hidden_state`."""
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):  # no padding: SDPA's unmasked path
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): every query sees every real key
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder:
            x = layer(x, mask)
        return x

    @classmethod
    def from_hf_state_dict(cls, hf_config, state_dict, **overrides):
        """This model with the weights of any HF BERT state dict: `BertModel` (MiniLM: no prefix) or
        `BertFor*` (bert-base-uncased: `bert.` prefix). Task heads start fresh when absent."""
        model = cls(BertConfig.from_hf(hf_config, **overrides))
        state_dict = {k.removeprefix("bert."): v for k, v in state_dict.items()}
        model.fresh_heads = load_mapped(model, state_dict, hf_names(model.config), optional=("pooler.", "classifier.", "mlm_head."))
        return model

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under the HF names of `BertFor*` (the inverse of `from_hf_state_dict`): the encoder
        under `bert.`, the task heads (`cls.`, `classifier.`) at the top, as `save_pretrained` writes them."""
        hf = unmap(self.state_dict(), hf_names(self.config))
        return {k if k.startswith(("cls.", "classifier.")) else "bert." + k: v for k, v in hf.items()}


class Bert(Encoder):
    """The sequence classifier: pooled [CLS] -> dropout -> classifier."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.pooler = nn.Linear(config.n_embd, config.n_embd)
        dropout = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.apply(lambda m: init_weights(m, config.init_std))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Class logits, (B, num_labels), from the pooled [CLS] token."""
        x = self.hidden_states(input_ids, attention_mask, token_type_ids)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, C)
        return self.classifier(self.dropout(pooled))


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
        self.apply(lambda m: init_weights(m, config.init_std))

    def lm_logits(self, x):
        """Vocabulary logits for hidden states x (..., C). Pretraining passes only the masked positions:
        the (..., vocab) output is the largest tensor of the step, and the other 85% would be thrown away."""
        return self.mlm_head(x, self.embeddings.word_embeddings.weight)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Vocabulary logits at every position, (B, T, vocab): HF `BertForMaskedLM(...).logits`."""
        return self.lm_logits(self.hidden_states(input_ids, attention_mask, token_type_ids))


def hf_names(config: BertConfig) -> dict[str, tuple[str, ...]]:
    """Each of our tensors -> the HF tensors (without the `bert.` prefix) it is made of. A model uses the
    entries of the tensors it has: the classifier's pooler and classifier, or the masked-LM head."""
    names = {}
    for w in ("weight", "bias"):
        for i in range(config.n_layer):
            hf, ours = f"encoder.layer.{i}.", f"encoder.{i}."
            names[ours + f"attention.qkv.{w}"] = tuple(hf + f"attention.self.{n}.{w}" for n in ("query", "key", "value"))
            names[ours + f"attention.dense.{w}"] = (hf + f"attention.output.dense.{w}",)
            names[ours + f"attention_norm.{w}"] = (hf + f"attention.output.LayerNorm.{w}",)
            names[ours + f"intermediate.{w}"] = (hf + f"intermediate.dense.{w}",)
            names[ours + f"output.{w}"] = (hf + f"output.dense.{w}",)
            names[ours + f"output_norm.{w}"] = (hf + f"output.LayerNorm.{w}",)
        names[f"embeddings.LayerNorm.{w}"] = (f"embeddings.LayerNorm.{w}",)
        names[f"pooler.{w}"] = (f"pooler.dense.{w}",)
        names[f"classifier.{w}"] = (f"classifier.{w}",)
        names[f"mlm_head.dense.{w}"] = (f"cls.predictions.transform.dense.{w}",)
        names[f"mlm_head.LayerNorm.{w}"] = (f"cls.predictions.transform.LayerNorm.{w}",)
    names["mlm_head.bias"] = ("cls.predictions.bias",)
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        names[f"embeddings.{table}.weight"] = (f"embeddings.{table}.weight",)
    return names


def build_classifier(checkpoint: str, num_labels: int = 2, pretrained: bool = True, **config_overrides) -> Bert:
    """Our Bert on `checkpoint` with a fresh `num_labels` classifier; see `layers.build_pretrained`."""
    return build_pretrained(Bert, BertConfig, checkpoint, num_labels, pretrained, **config_overrides)
