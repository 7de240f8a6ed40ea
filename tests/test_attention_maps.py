"""Attention maps: the probabilities recorded from our BERT and GPT are transformers' `output_attentions` on
the same weights, every row sums to 1, a decoder's maps are lower-triangular, and the figures are real PNGs."""

from __future__ import annotations

import struct

import pytest
import torch
import transformers
from conftest import only_run, run_script, tiny_overrides

from bertgpt.experiments.attention_maps import attention_maps, attention_probabilities, write_figures
from bertgpt.models import bert, convert, gpt, library
from bertgpt.models.attention import scaled_dot_product_attention

V, PAD = 100, 0
TEXT = "A moving, beautifully acted film."


@pytest.fixture(scope="module")
def padded():
    """Token ids (B=3, T=8), right-padded; lengths 8, 5 and 2."""
    ids = torch.randint(1, V, (3, 8), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(8)[None] < torch.tensor([8, 5, 2])[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def tiny_hf(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=V, pad_token_id=PAD, max_position_embeddings=32)
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
        return transformers.BertModel(config), bert.BertForSequenceClassification
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, pad_token_id=PAD)
        return transformers.GPT2Model(config), gpt.GPTForSequenceClassification
    # SmolLM2's shape in small: rotary positions, grouped-query attention (6 query heads share 2 kv heads)
    config = transformers.LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                      intermediate_size=80, rope_theta=1000.0, tie_word_embeddings=True, **common)
    return transformers.LlamaModel(config), gpt.GPTForSequenceClassification


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_recorded_probabilities_are_transformers_output_attentions(kind, padded):
    hf, ours_cls = tiny_hf(kind)
    ours = convert.from_hf(ours_cls, hf.config, hf.state_dict())
    ids, mask = padded
    expected = attention_probabilities(hf, ids, mask)  # under eager attention, switched back afterwards
    assert hf.config._attn_implementation != "eager"
    got = attention_probabilities(ours, ids, mask)
    assert got.shape == expected.shape == (2, 3, hf.config.num_attention_heads, 8, 8)
    real = mask.bool()[None, :, None, :, None].expand_as(got)  # what a pad query attends to is never read
    assert (got - expected).abs()[real].max().item() <= 1e-5
    assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)
    pad_keys = (mask == 0)[None, :, None, None, :].expand_as(got)
    assert got[pad_keys & real].abs().max().item() == 0.0  # no real token attends to a pad
    assert bool((got.triu(1) == 0).all()) == (kind != "bert")  # the decoders' maps are lower-triangular
    attends = {m.attend for m in ours.modules() if isinstance(m, (bert.SelfAttention, gpt.CausalSelfAttention))}
    assert attends == {scaled_dot_product_attention}  # the recorder is gone once the pass is over


def test_maps_of_one_text_and_their_figures(tiny_bert, tiny_gpt2, tmp_path):
    encoder = attention_maps(convert.build_bert(tiny_bert), library.load_tokenizer(tiny_bert), TEXT, name="tiny bert")
    decoder = attention_maps(library.build(tiny_gpt2), library.load_tokenizer(tiny_gpt2), TEXT, name="tiny gpt2")
    assert encoder.tokens[0] == "[CLS]" and encoder.tokens[-1] == "[SEP]" and len(encoder.tokens) == encoder.layers.size(-1)
    assert (encoder.causal, encoder.pooled, decoder.causal, decoder.pooled) == (False, 0, True, len(decoder.tokens) - 1)
    assert encoder.layers.shape[:2] == (2, 2) and decoder.layers.shape[:2] == (2, 2)
    for maps in (encoder, decoder):
        assert torch.allclose(maps.layers.sum(-1), torch.ones(()), atol=1e-5)
    assert decoder.layers[:, :, 0, 0].eq(1).all()  # the first token of a decoder can only attend to itself
    written = write_figures([encoder, decoder], tmp_path)
    names = ["tiny_bert_heads.png", "tiny_bert_pooled.png", "tiny_gpt2_heads.png", "tiny_gpt2_pooled.png", "side_by_side.png"]
    assert [p.name for p in written] == names
    for path in written:
        width, height = png_size(path)
        assert 150 <= width <= 3000 and 150 <= height <= 3000, (path.name, width, height)
        assert 5_000 < path.stat().st_size < 1_000_000


def png_size(path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk; fails on anything else."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_cli_draws_a_checkpoint_and_a_library_model(tiny_bert, tiny_gpt2, workdir, tmp_path):
    logs = tmp_path / "logs"
    steps = ("trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false")
    trained = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, *steps))
    assert trained.returncode == 0, trained.stderr[-3000:]
    ckpt = only_run(logs) / "checkpoints" / "last.ckpt"
    out = tmp_path / "figures"
    result = run_script("attention_maps", f"models=[{ckpt},{tiny_gpt2}]", "ours=true", f"output_dir={out}",
                        f"paths.log_dir={logs}", "text=Dull, and far too long: a waste.")
    assert result.returncode == 0, result.stderr[-3000:]
    run_name = f"{only_run(logs).name}-last"
    expected = {f"{run_name}_heads.png", f"{run_name}_pooled.png", f"{tiny_gpt2.split('/')[-1]}-ours_heads.png",
                f"{tiny_gpt2.split('/')[-1]}-ours_pooled.png", "side_by_side.png"}
    assert {p.name for p in out.iterdir()} == expected
    assert all(png_size(p)[0] >= 200 for p in out.iterdir())


def test_cli_names_a_missing_checkpoint_and_an_empty_text(tmp_path):
    where = (f"output_dir={tmp_path}/out", f"paths.log_dir={tmp_path}/logs")
    result = run_script("attention_maps", f"models=[{tmp_path}/none.ckpt]", *where)
    assert result.returncode == 2
    assert "none.ckpt: no such file" in result.stderr
    result = run_script("attention_maps", "text=  ", *where)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: text is empty: pass a short review, e.g. text="A moving, beautifully acted film."'
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_our_minilm_attention_is_transformers_own():
    """The bundled all-MiniLM-L6-v2 through our bert.py and through transformers' BertModel: the same maps."""
    name = "all-minilm-l6-v2"
    tokenizer = library.load_tokenizer(name)
    ours = attention_maps(convert.build_bert(name), tokenizer, TEXT)
    theirs = attention_maps(library.build(name), tokenizer, TEXT)
    assert ours.tokens == theirs.tokens == ["[CLS]", "a", "moving", ",", "beautifully", "acted", "film", ".", "[SEP]"]
    assert ours.layers.shape == (6, 12, 9, 9)
    assert (ours.layers - theirs.layers).abs().max().item() <= 1e-5
    assert not ours.causal and ours.pooled == 0
