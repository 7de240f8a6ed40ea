"""Attention maps: what every head of a BERT or a decoder attends to in one text, drawn as PNG figures.

    maps = attention_maps(model, tokenizer, "A moving, beautifully acted film.")   # any model of ours or the library's
    write_figures([bert_maps, decoder_maps], "reports/attention")

The library's models return their probabilities themselves (`output_attentions=True`), under transformers'
eager attention, the one implementation that materialises them. Our bert.py and gpt.py are left as they are:
while they run, `recorded_attention` wraps each attention module's `attend` and computes its probabilities
with the masked softmax of `models/attention.py` applied to the identity matrix as values, so the recorded
rows are exactly the weights that multiply v.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bertgpt.data import tokenize
from bertgpt.errors import UserError
from bertgpt.experiments.compare_report import pyplot
from bertgpt.files import atomic_file
from bertgpt.models.attention import matmul_attention
from bertgpt.models.bert import Encoder, SelfAttention
from bertgpt.models.gpt import GPT, CausalSelfAttention


@dataclass
class AttentionMaps:
    """One text through one model. `layers[l, h, i]` is what token i attends to in layer l, head h: a row of
    probabilities over the keys, summing to 1."""

    name: str
    tokens: list[str]
    layers: torch.Tensor  # (n_layer, n_head, T, T)
    pooled: int  # the position the sequence classifier reads: [CLS] (0) in BERT, the last token in a decoder

    @property
    def causal(self) -> bool:
        """No token attends to a later one: a decoder's mask, read off the probabilities themselves."""
        return bool((self.layers.triu(1) == 0).all())


@contextlib.contextmanager
def recorded_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yields a list that the forward passes run inside the block fill with each attention layer's
    probabilities, (B, n_head, T, S), in layer order. A later pass overwrites an earlier one's."""
    modules = [m for m in model.modules() if isinstance(m, (SelfAttention, CausalSelfAttention))]
    probabilities: list[torch.Tensor | None] = [None] * len(modules)

    def recorder(layer: int, attend):
        def attend_and_record(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, **options):
            identity = torch.eye(k.size(-2), dtype=v.dtype, device=v.device).expand(*v.shape[:-1], -1)  # (B, nkv, S, S)
            probabilities[layer] = matmul_attention(q, k, identity, attn_mask, 0.0, is_causal, scale, enable_gqa)
            return attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, **options)

        return attend_and_record

    originals = [m.attend for m in modules]
    for layer, module in enumerate(modules):
        module.attend = recorder(layer, module.attend)
    try:
        yield probabilities
    finally:
        for module, attend in zip(modules, originals):
            module.attend = attend


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """A transformers model on its eager attention for the block: the others return no probabilities."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def attention_probabilities(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every layer's attention probabilities, (n_layer, B, n_head, T, T), in eval mode (no dropout), for our
    models (bert.py, gpt.py) and transformers' alike."""
    training = model.training
    model.eval()
    try:
        if isinstance(model, (Encoder, GPT)):
            with recorded_attention(model) as layers:
                model.hidden_states(input_ids, attention_mask)
        else:
            with eager_attention(model):
                layers = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    finally:
        model.train(training)
    if not layers or any(layer is None for layer in layers):
        raise TypeError(f"{type(model).__name__} returned no attention probabilities")
    return torch.stack([layer.float() for layer in layers])


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """What each token reads as: byte-level BPE's `Ġ` becomes the space it stands for, shown as `_`."""
    return [tokenizer.decode([i]).replace(" ", "_") or tokenizer.convert_ids_to_tokens(i) for i in ids]


def check_text(text) -> str:
    if text is None or not str(text).strip():
        raise UserError('text is empty: pass a short review, e.g. text="A moving, beautifully acted film."')
    return str(text)


def attention_maps(model: torch.nn.Module, tokenizer, text: str, max_length: int = 128, name: str | None = None) -> AttentionMaps:
    """The attention maps of `text`, tokenized as training tokenizes it (`data.tokenize.encode`)."""
    (ids,) = tokenize.encode(tokenizer, [check_text(text)], max_length)
    layers = attention_probabilities(model, torch.tensor([ids], device=next(model.parameters()).device))[:, 0].cpu()
    maps = AttentionMaps(name or type(model).__name__, token_labels(tokenizer, ids), layers, pooled=0)
    maps.pooled = len(ids) - 1 if maps.causal else 0
    return maps


# ----- loading any model of ours or the library's ------------------------------------------------------------


def load(source: str, ours: bool = False, max_length: int = 128) -> tuple[torch.nn.Module, object, int, str]:
    """(model, tokenizer, max_length, name) for a `.ckpt` written by src/train.py (its own net, tokenizer and
    max_length), or a bundled name, Hugging Face folder or hub id: the library's model, or with `ours` our
    bert.py / gpt.py on the same weights."""
    if source.endswith(".ckpt") or Path(source).expanduser().is_file():
        from bertgpt.pipeline import load_checkpoint

        module, datamodule_class, data_hparams = load_checkpoint(source)
        file = Path(source)
        return module.net, datamodule_class(**data_hparams).tokenizer, data_hparams["max_length"], f"{file.parent.parent.name}-{file.stem}"
    from bertgpt.models import convert, library

    if not ours:
        return library.build(source), library.load_tokenizer(source), max_length, Path(source).name
    hf_config, _ = convert.read_hf_config(source)
    builder = convert.build_bert if hf_config.model_type == "bert" else convert.build_gpt
    return builder(source), library.load_tokenizer(source), max_length, f"{Path(source).name}-ours"


# ----- figures -----------------------------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def kind(maps: AttentionMaps) -> str:
    return "causal" if maps.causal else "bidirectional"


COLOURS = "attention probability (square-root colour scale)"


def heat(ax, matrix: torch.Tensor, rows: list[str] | None, columns: list[str] | None, fontsize: float):
    """One probability matrix on a fixed 0..1 scale, so every panel of every figure reads the same; the colours
    follow the square root, or the heavy attention on the first token would leave the rest of a map black."""
    from matplotlib.colors import PowerNorm

    image = ax.imshow(matrix.numpy(), norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), cmap="viridis", interpolation="nearest", aspect="auto")
    ax.set_yticks(range(len(rows)) if rows else [], rows or [], fontsize=fontsize)
    ax.set_xticks(range(len(columns)) if columns else [], columns or [], fontsize=fontsize, rotation=90)
    ax.tick_params(length=0, pad=1)
    return image


def grid(rows: int, columns: int, cell: float, gaps: tuple[float, float], margins: tuple[float, float, float, float]):
    """A figure of rows x columns square panels of `cell` inches, `gaps` (across, down) between them and
    `margins` (left, right, top, bottom) around them, in inches, and an axes for the colour bar in the right
    margin. Laid out by hand: matplotlib's constrained layout takes seconds over the 270 panels of SmolLM2."""
    left, right, top, bottom = margins
    width = left + columns * cell + (columns - 1) * gaps[0] + right
    height = top + rows * cell + (rows - 1) * gaps[1] + bottom
    fig, axes = pyplot().subplots(rows, columns, figsize=(width, height), dpi=80, squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=gaps[0] / cell, hspace=gaps[1] / cell)
    bar = min(rows * cell, 4.0)
    colour_bar = fig.add_axes([1 - (right - 0.6) / width, 1 - (top + bar) / height, 0.12 / width, bar / height])
    return fig, axes, colour_bar


def heads_figure(maps: AttentionMaps):
    """A grid of small multiples, layers down and heads across: each panel is one head's (T, T) map, queries
    down and keys across. Tokens label the left column and the bottom row."""
    n_layer, n_head, T, _ = maps.layers.shape
    size = max(0.75, 0.1 * T)
    label = 0.07 * max(len(t) for t in maps.tokens) + 0.2  # inches for the longest token label
    fig, axes, colour_bar = grid(n_layer, n_head, size, (0.1, 0.1), (label, 1.8, 0.55, label))
    fontsize = max(3.0, min(7.0, 55 * size / T))
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            image = heat(ax, maps.layers[layer, head], maps.tokens if head == 0 else None,
                         maps.tokens if layer == n_layer - 1 else None, fontsize)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if head == n_head - 1:
                ax.yaxis.set_label_position("right")
                ax.set_ylabel(f"layer {layer}", fontsize=7, rotation=270, labelpad=8)
    fig.suptitle(f"{maps.name}: {kind(maps)} attention, every head (row: query, column: key)", fontsize=9)
    fig.colorbar(image, cax=colour_bar, label=COLOURS)
    return fig


def pooled_figure(maps: AttentionMaps):
    """The attention paid by the pooled token, one row per layer (the mean over heads) and one column per key."""
    n_layer, _, T, _ = maps.layers.shape
    fig, ax = pyplot().subplots(figsize=(2.4 + 0.45 * T, 1.6 + 0.28 * n_layer), dpi=90)
    image = heat(ax, maps.layers[:, :, maps.pooled].mean(1), [f"layer {layer}" for layer in range(n_layer)], maps.tokens, 8)
    ax.set_xlabel("key token")
    ax.set_title(f"{maps.name}: attention paid by {maps.tokens[maps.pooled]!r}\n"
                 f"(position {maps.pooled}, the pooled token; mean over heads)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label=COLOURS)
    fig.tight_layout()
    return fig


def side_by_side_figure(all_maps: Sequence[AttentionMaps]):
    """The models in columns, at the same relative depths in rows (as many as the shallowest has layers): each
    panel is one layer's map, the mean over its heads."""
    depth = min(m.layers.size(0) for m in all_maps)
    label = 0.07 * max(len(t) for m in all_maps for t in m.tokens) + 0.2
    fig, axes, colour_bar = grid(depth, len(all_maps), 2.4, (label + 0.3, label + 0.25), (label, 1.8, 0.7, label))
    for column, maps in enumerate(all_maps):
        n_layer = maps.layers.size(0)
        for row in range(depth):
            layer = round(row * (n_layer - 1) / max(depth - 1, 1))
            ax = axes[row, column]
            image = heat(ax, maps.layers[layer].mean(0), maps.tokens, maps.tokens, 7)
            where = f"layer {layer} of 0-{n_layer - 1}"
            ax.set_title(f"{maps.name} ({kind(maps)})\n{where}, mean over heads" if row == 0 else where, fontsize=8)
    fig.colorbar(image, cax=colour_bar, label=COLOURS)
    return fig


def save(fig, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return path


def write_figures(all_maps: Sequence[AttentionMaps], output_dir: str | Path) -> list[Path]:
    """`<name>_heads.png` and `<name>_pooled.png` for each model, and `side_by_side.png` for two or more."""
    output_dir = Path(output_dir)
    written = []
    for maps in all_maps:
        written.append(save(heads_figure(maps), output_dir / f"{slug(maps.name)}_heads.png"))
        written.append(save(pooled_figure(maps), output_dir / f"{slug(maps.name)}_pooled.png"))
    if len(all_maps) > 1:
        written.append(save(side_by_side_figure(all_maps), output_dir / "side_by_side.png"))
    return written


def main(cfg) -> list[Path]:
    """src/attention_maps.py: the figures of `cfg.text` for every model in `cfg.models`."""
    sources = [cfg.models] if isinstance(cfg.models, str) else list(cfg.models)
    if not sources:
        raise UserError("models=[] names no model: pass models=[all-minilm-l6-v2,smollm2-135m] or a .ckpt of src/train.py.")
    check_text(cfg.text)  # before minutes of loading
    all_maps = []
    for source in sources:
        model, tokenizer, max_length, name = load(str(source), cfg.ours, cfg.max_length)
        all_maps.append(attention_maps(model, tokenizer, cfg.text, max_length, name))
    written = write_figures(all_maps, cfg.output_dir)
    for path in written:
        print(path)
    return written
