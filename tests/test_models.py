"""The hand-written BERT and GPT compute what Hugging Face computes on the same weights, with every head,
and a checkpoint loaded into ours exports back to the same tensors.

Tiny random HF models (built in memory, vocab 100) check every code path in well under a second each;
the `slow` tests load the real bundled all-MiniLM-L6-v2 and SmolLM2-135M.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bertgpt import ROOT
from bertgpt.errors import UserError
from bertgpt.models import bert, convert, gpt, library
from bertgpt.models.convert import from_hf, to_hf
from bertgpt.models.hub import resolve_checkpoint
from bertgpt.models.library import load_tokenizer

CONF = ROOT / "conf" / "model"
# What conf/task/sentiment.yaml adds to a model config, and the labels the datamodule gives.
SENTIMENT = {"_target_": "bertgpt.tasks.classification.SequenceClassifier", "labels": ["negative", "positive"]}
SENTENCES = [
    "A wonderful, moving film with a superb cast.",
    "Dull.",
    "I wanted to like it, but the plot made no sense and the ending dragged on forever.",
    "The best thing about this movie is the soundtrack.",
]
V, PAD = 100, 0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These forward passes are small: with two threads, a core busy elsewhere (a training run) stalls
    every OpenMP barrier, and a 76-token matmul takes 13x longer than on one thread. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _maxdiff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """max |a - b|, over real tokens only when a mask is given: what a model computes at a pad position
    is never read, and a left pad's output is undefined (it may attend to nothing)."""
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()


@pytest.fixture(scope="module")
def batch():
    """Token ids (B=4, T=10), right-padded with PAD; lengths 10, 7, 3 and 1."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (4, 10), generator=g)
    mask = (torch.arange(10)[None] < torch.tensor([10, 7, 3, 1])[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def to_left_padding(ids, mask):
    """The same sentences, with the padding moved to the left."""
    order = torch.argsort(mask, dim=1, stable=True)  # pads (0) first, then the real tokens in order
    return ids.gather(1, order), mask.gather(1, order)


# ----- BERT --------------------------------------------------------------------------------------------------

def tiny_bert_config(**kw):
    return transformers.BertConfig(**{
        **dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=32, pad_token_id=PAD, num_labels=3),
        **kw,
    })


def test_bert_matches_hf_bertmodel(batch):
    torch.manual_seed(0)
    hf = transformers.BertModel(tiny_bert_config()).eval()  # no `bert.` prefix, no classifier: MiniLM's layout
    ours = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict()).eval()
    assert sorted(ours.fresh_heads) == ["classifier.bias", "classifier.weight"]
    ids, mask = batch
    types = (torch.arange(ids.size(1)) >= 5).long().expand_as(ids)
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        got = ours.hidden_states(ids, mask, token_type_ids=types)
        assert _maxdiff(got, hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state) <= 1e-5
        assert _maxdiff(ours.hidden_states(ids), hf(ids).last_hidden_state) <= 1e-5  # no mask: SDPA's unmasked path


def test_bert_matches_hf_sequence_classification(batch):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(tiny_bert_config()).eval()  # `bert.` prefix: bert-base's layout
    ours = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict()).eval()
    assert ours.fresh_heads == []
    ids, mask = batch
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf.bert(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        logits = ours(ids, mask)
        assert logits.shape == (4, 3)
        assert _maxdiff(logits, hf(ids, attention_mask=mask).logits) <= 1e-5
    two_labels = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict(), num_labels=2)  # a head for 3: fresh
    assert sorted(two_labels.fresh_heads) == ["classifier.bias", "classifier.weight"]


def test_bert_training_mode_matches_hf_gradients(batch):
    """Same loss and gradients with dropout off: the backward pass (fused qkv included) is right too."""
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ).train()
    ours = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict()).train()
    ids, mask = batch
    labels = torch.tensor([0, 1, 2, 1])
    torch.nn.functional.cross_entropy(ours(ids, mask), labels).backward()
    torch.nn.functional.cross_entropy(hf(ids, attention_mask=mask).logits, labels).backward()
    q = hf.bert.encoder.layer[0].attention.self.query.weight.grad
    assert _maxdiff(ours.encoder[0].attention.qkv.weight.grad[:32], q) <= 1e-5
    assert _maxdiff(ours.embeddings.word_embeddings.weight.grad, hf.bert.embeddings.word_embeddings.weight.grad) <= 1e-5


def test_bert_token_head_matches_hf(batch):
    """BertForTokenClassification: dropout -> classifier on every token, no pooler, HF's dropout rule."""
    torch.manual_seed(0)
    hf = transformers.BertForTokenClassification(tiny_bert_config(num_labels=5, classifier_dropout=0.3)).eval()
    ours = from_hf(bert.BertForTokenClassification, hf.config, hf.state_dict()).eval()
    assert ours.fresh_heads == [] and not hasattr(ours, "pooler")
    assert ours.dropout.p == hf.dropout.p == 0.3
    ids, mask = batch
    with torch.no_grad():
        logits = ours(ids, mask)
        assert logits.shape == (4, 10, 5)
        assert _maxdiff(logits, hf(ids, attention_mask=mask).logits) <= 1e-5  # pads too: BERT's are well defined
    body_only = from_hf(bert.BertForTokenClassification, hf.config, transformers.BertModel(hf.config).state_dict())
    assert sorted(body_only.fresh_heads) == ["classifier.bias", "classifier.weight"]


def test_causal_bert_never_reads_ahead(batch):
    """causal=True: the output at position t is the same whatever follows t, padded or not; the default mask
    (the same weights) does read ahead."""
    torch.manual_seed(0)
    hf = transformers.BertModel(tiny_bert_config())
    causal = from_hf(bert.BertForTokenClassification, hf.config, hf.state_dict(), causal=True).eval()
    bidirectional = from_hf(bert.BertForTokenClassification, hf.config, hf.state_dict()).eval()
    ids, mask = batch
    t = 4
    changed = ids.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % (V - 1) + 1  # every later token (real or pad) replaced
    with torch.no_grad():
        before, after = causal.hidden_states(ids, mask), causal.hidden_states(changed, mask)
        assert _maxdiff(before[:, : t + 1], after[:, : t + 1], mask[:, : t + 1]) <= 1e-6
        assert _maxdiff(before[:1], after[:1]) > 1e-3  # the later positions did change
        assert _maxdiff(bidirectional.hidden_states(ids, mask)[:1, : t + 1], bidirectional.hidden_states(changed, mask)[:1, : t + 1]) > 1e-3
        # Right padding under the causal mask: each sentence as if alone, unpadded.
        for row, n in enumerate(mask.sum(1).tolist()):
            alone = causal.hidden_states(ids[row : row + 1, :n])
            assert _maxdiff(before[row : row + 1, :n], alone) <= 1e-5
        assert causal(ids).shape == (4, 10, 3)  # no mask: the causal mask alone
        assert _maxdiff(causal.hidden_states(ids)[:1], before[:1]) <= 1e-6  # row 0 has no padding


def pooled_by_hand(x, mask, pooling):
    """(B, C): the first real token, the mean of the real tokens or the last real one, row by row."""
    rows = []
    for h, m in zip(x, mask.bool()):
        real = h[m]
        rows.append({"cls": real[0], "mean": real.mean(0), "last": real[-1]}[pooling])
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_bert_sequence_head_pools_what_it_says(pooling, batch):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(tiny_bert_config())
    ours = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict(), pooling=pooling).eval()
    ids, mask = batch
    with torch.no_grad():
        x = ours.hidden_states(ids, mask)
        expected = ours.classifier(torch.tanh(ours.pooler(pooled_by_hand(x, mask, pooling))))
        assert _maxdiff(ours(ids, mask), expected) <= 1e-6
        assert _maxdiff(ours(ids, mask), hf(ids, attention_mask=mask).logits) > 1e-4  # not [CLS]: not HF's any more


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
def test_decoder_sequence_head_pools_what_it_says(pooling, padding, batch):
    hf = tiny_decoder("llama", "sequence")
    ours = from_hf(gpt.GPTForSequenceClassification, hf.config, hf.state_dict(), pooling=pooling).eval()
    ids, mask = batch if padding == "right" else to_left_padding(*batch)
    with torch.no_grad():
        expected = ours.score(pooled_by_hand(ours.hidden_states(ids, mask), mask, pooling))
        assert _maxdiff(ours(ids, mask), expected) <= 1e-6
        if pooling == "last":  # the default: HF's head
            assert _maxdiff(ours(ids, mask), hf(ids, attention_mask=mask).logits) <= 1e-5


def test_attention_direction_switches_refuse_what_they_cannot_be():
    with pytest.raises(UserError, match="pooling=max: choose cls"):
        convert.bert_config_from_hf(tiny_bert_config(), pooling="max")
    with pytest.raises(UserError, match="pooling=first: choose cls"):
        convert.gpt_config_from_hf(tiny_decoder("gpt2", None).config, pooling="first")
    hf = transformers.BertForSequenceClassification(tiny_bert_config())
    causal = from_hf(bert.BertForSequenceClassification, hf.config, hf.state_dict(), causal=True, pooling="last")
    with pytest.raises(UserError, match="causal=True, pooling=last has no Hugging Face counterpart"):
        to_hf(causal)
    mean_tagger = from_hf(bert.BertForTokenClassification, hf.config, hf.state_dict(), pooling="mean")  # a token head pools nothing
    assert to_hf(mean_tagger)[0].num_labels == 3


def test_bert_causal_yaml_switches_our_bert_to_a_causal_mask():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="bert_causal", overrides=["net.pretrained=false", "+net.n_layer=1"])
        scratch = compose(config_name="bert_scratch", overrides=["net.causal=true", "net.pooling=mean"])  # the switches, no +
        decoder = compose(config_name="gpt_scratch", overrides=["net.pooling=mean"])
    assert (scratch.net.causal, scratch.net.pooling, decoder.net.pooling, decoder.net.checkpoint) == (True, "mean", "mean", "smollm2-135m")
    assert "causal" not in decoder.net  # a decoder is causal by construction
    module = instantiate(cfg, _recursive_=False, **SENTIMENT)
    assert (module.net.config.causal, module.net.config.pooling, module.net.config.vocab_size) == (True, "last", 30522)
    ids = torch.randint(1, 30522, (2, 6))
    assert module(ids, torch.ones_like(ids)).shape == (2, 2)


# ----- GPT: GPT-2 and Llama layouts ----------------------------------------------------------------------------

DECODERS = {  # kind -> head -> the HF class
    "gpt2": {None: transformers.GPT2Model, "sequence": transformers.GPT2ForSequenceClassification,
             "token": transformers.GPT2ForTokenClassification},
    "llama": {None: transformers.LlamaModel, "sequence": transformers.LlamaForSequenceClassification,
              "token": transformers.LlamaForTokenClassification},
}


def tiny_decoder(kind: str, head: str | None, **kw):
    """A tiny random HF decoder: bare (head=None) or with a "sequence" or "token" head."""
    torch.manual_seed(0)
    kw = dict(pad_token_id=PAD, num_labels=3) | kw
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, **kw)
    else:  # SmolLM2's shape in small: grouped-query attention (6 heads share 2 kv heads), tied, no biases
        config = transformers.LlamaConfig(
            vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, max_position_embeddings=32, tie_word_embeddings=True, rope_theta=1000.0,
            rms_norm_eps=1e-5, **kw,
        )
    return DECODERS[kind][head](config).eval()


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_matches_hf(kind, padding, batch):
    hf = tiny_decoder(kind, "sequence")
    ours = from_hf(gpt.GPTForSequenceClassification, hf.config, hf.state_dict()).eval()
    assert ours.fresh_heads == []
    ids, mask = batch
    if padding == "left":
        ids, mask = to_left_padding(ids, mask)
    # HF numbers positions 0..T-1 whatever the padding; hand it ours (real tokens only) for left padding.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    base = getattr(hf, hf.base_model_prefix)
    with torch.no_grad():
        expected = base(ids, attention_mask=mask, position_ids=positions).last_hidden_state
        assert _maxdiff(ours.hidden_states(ids, mask), expected, mask) <= 1e-5
        logits = ours(ids, mask)
        assert logits.shape == (4, 3)
        assert _maxdiff(logits, hf(ids, attention_mask=mask, position_ids=positions).logits) <= 1e-5


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_token_head_matches_hf(kind, padding, batch):
    """GPT2ForTokenClassification (`classifier`) / LlamaForTokenClassification (`score`): dropout, then a
    biased projection at every position, on both padding sides."""
    hf = tiny_decoder(kind, "token", num_labels=5, classifier_dropout=0.2)
    ours = from_hf(gpt.GPTForTokenClassification, hf.config, hf.state_dict()).eval()
    assert ours.fresh_heads == []
    assert ours.dropout.p == hf.dropout.p == 0.2
    ids, mask = batch
    if padding == "left":
        ids, mask = to_left_padding(ids, mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = ours(ids, mask)
        assert logits.shape == (4, 10, 5)
        assert _maxdiff(logits, hf(ids, attention_mask=mask, position_ids=positions).logits, mask) <= 1e-5
    assert tiny_decoder(kind, "token").dropout.p == gpt.GPTConfig().classifier_dropout == 0.1  # HF's default, and ours


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_bare_model_and_padding_sides_agree(kind, batch):
    """A bare `GPT2Model` / `LlamaModel` state dict loads (score starts fresh), and left padding gives
    the same logits as right padding, without being told position ids."""
    hf = tiny_decoder(kind, None)
    ours = from_hf(gpt.GPTForSequenceClassification, hf.config, hf.state_dict(), num_labels=2).eval()
    assert ours.fresh_heads == ["score.weight"]
    ids, mask = batch
    left_ids, left_mask = to_left_padding(ids, mask)
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state, mask) <= 1e-5
        assert _maxdiff(ours.hidden_states(ids), hf(ids).last_hidden_state) <= 1e-5  # no mask at all
        assert _maxdiff(ours(left_ids, left_mask), ours(ids, mask)) <= 1e-5
        assert torch.isfinite(ours.hidden_states(left_ids, left_mask)).all()  # left pads attend to nothing real


def test_gpt2_generate_matches_hf_greedy():
    hf = transformers.GPT2LMHeadModel(tiny_decoder("gpt2", None).config).eval()
    ours = from_hf(gpt.GPT, hf.config, hf.state_dict()).eval()
    prompt = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        assert _maxdiff(ours(prompt), hf(prompt).logits) <= 1e-5  # the language model's forward: (B, T, vocab)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                           eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(ours.generate(prompt, max_new_tokens=12), expected)


def test_config_overrides_resize_a_random_model():
    config = convert.gpt_config_from_hf(tiny_decoder("llama", None).config, n_head=3, n_embd=24)
    assert (config.head_dim, config.n_kv_head, config.n_inner) == (8, 1, 40)  # derived, keeping the proportions
    with pytest.raises(Exception, match="unknown model.net option"):
        convert.bert_config_from_hf(tiny_bert_config(), n_layers=2)
    mixed = gpt.GPT(gpt.GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16, positions="rotary"))
    with pytest.raises(UserError, match="only the GPT-2 and Llama layouts export"):  # rotary with LayerNorm: neither
        to_hf(mixed)


def test_build_bert_random_from_bundled_config():
    net = convert.build_bert("all-minilm-l6-v2", num_labels=2, pretrained=False, n_layer=1, n_embd=64, n_head=4)
    assert (net.config.vocab_size, net.config.n_inner, net.config.pad_token_id) == (30522, 256, 0)
    ids = torch.randint(0, 30522, (2, 6))
    assert net(ids, torch.ones_like(ids)).shape == (2, 2)


def test_bert_scratch_yaml_builds_the_lightning_module():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="bert_scratch", overrides=["net.pretrained=false", "+net.n_layer=1"])
    module = instantiate(cfg, _recursive_=False, **SENTIMENT)
    assert isinstance(module.net, bert.BertForSequenceClassification) and len(module.net.encoder) == 1
    ids = torch.randint(0, 30522, (2, 6))
    assert module(ids, torch.ones_like(ids)).shape == (2, 2)
    tagger = instantiate(cfg.net, head="token", num_labels=12)  # how a module for another task builds its net
    assert isinstance(tagger, bert.BertForTokenClassification) and tagger(ids).shape == (2, 6, 12)


def test_builders_load_saved_folders(tiny_bert, tiny_gpt2):
    """The builders' own path: a folder saved by `save_pretrained` (conftest's tiny models), the
    tokenizer's pad id, a `BertForSequenceClassification` head reused, GPT-2's `transformer.` prefix and
    Conv1D weights, and its missing pad token replaced by end-of-text."""
    ids = torch.tensor([[5, 9, 14, 3, 8], [7, 2, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ours = convert.build_bert(tiny_bert, num_labels=2).eval()
    hf = transformers.BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    assert ours.fresh_heads == [] and ours.config.pad_token_id == load_tokenizer(tiny_bert).pad_token_id
    with torch.no_grad():
        assert _maxdiff(ours(ids, mask), hf(ids, attention_mask=mask).logits) <= 1e-5

    ours = convert.build_gpt(tiny_gpt2, num_labels=2).eval()
    hf = transformers.GPT2Model.from_pretrained(tiny_gpt2).eval()
    tokenizer = load_tokenizer(tiny_gpt2)
    assert ours.fresh_heads == ["score.weight"]
    assert ours.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state, mask) <= 1e-5


def test_builders_take_a_head(tiny_bert, tiny_gpt2):
    """One contract for the library's models and ours: head="token" gives (B, T, num_labels) logits; an
    unknown head is a UserError naming the choices."""
    ids = torch.tensor([[5, 9, 14, 3, 8], [7, 2, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        for checkpoint in (tiny_bert, tiny_gpt2):
            net = library.build(checkpoint, head="token", num_labels=5).eval()
            assert net(input_ids=ids, attention_mask=mask).logits.shape == (2, 5, 5)
        net = convert.build_bert(tiny_bert, head="token", num_labels=5).eval()
        assert isinstance(net, bert.BertForTokenClassification) and net(ids, mask).shape == (2, 5, 5)
        assert sorted(net.fresh_heads) == ["classifier.bias", "classifier.weight"]  # the checkpoint's is for 2 labels
        net = convert.build_gpt(tiny_gpt2, head="token", num_labels=5).eval()
        assert isinstance(net, gpt.GPTForTokenClassification) and net(ids, mask).shape == (2, 5, 5)
        assert sorted(net.fresh_heads) == ["classifier.bias", "classifier.weight"]
    for build in (library.build, convert.build_bert, convert.build_gpt):
        with pytest.raises(UserError, match="head=span: choose sequence .* or token"):
            build(tiny_bert if build is not convert.build_gpt else tiny_gpt2, head="span")


# ----- load and export: every head, both directions ---------------------------------------------------------------

HEADS = [
    ("bert", transformers.BertForSequenceClassification, bert.BertForSequenceClassification),
    ("bert", transformers.BertForTokenClassification, bert.BertForTokenClassification),
    ("gpt2", transformers.GPT2ForSequenceClassification, gpt.GPTForSequenceClassification),
    ("gpt2", transformers.GPT2ForTokenClassification, gpt.GPTForTokenClassification),
    ("llama", transformers.LlamaForSequenceClassification, gpt.GPTForSequenceClassification),
    ("llama", transformers.LlamaForTokenClassification, gpt.GPTForTokenClassification),
]


@pytest.mark.parametrize("kind, library_cls, ours_cls", HEADS, ids=[h[1].__name__ for h in HEADS])
def test_load_then_export_gives_back_the_library_checkpoint(kind, library_cls, ours_cls, batch):
    """A library checkpoint loaded into ours and exported again: the same tensor names and values, a config
    from which the library builds the same model, and from which ours builds the same config again."""
    if kind == "bert":
        torch.manual_seed(0)
        hf = library_cls(tiny_bert_config(num_labels=5)).eval()
    else:
        hf = tiny_decoder(kind, "token" if "Token" in library_cls.__name__ else "sequence", num_labels=5)
    with torch.no_grad():  # no tensor left at its exact init (zero biases, unit norms) hides a wrong mapping
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = from_hf(ours_cls, hf.config, hf.state_dict()).eval()
    config, state_dict = to_hf(ours)
    expected = hf.state_dict()
    assert sorted(state_dict) == sorted(expected)
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)

    again = library_cls(config).eval()
    again.load_state_dict(state_dict, strict=True)
    ids, mask = batch
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)
    config_from_hf = convert.bert_config_from_hf if kind == "bert" else convert.gpt_config_from_hf
    assert config_from_hf(config) == ours.config


# ----- the real bundled weights --------------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_matches_hf():
    name = "all-minilm-l6-v2"
    tokenizer = load_tokenizer(name)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(resolve_checkpoint(name)).eval()
    ours = convert.build_bert(name, num_labels=2).eval()
    assert sorted(ours.fresh_heads) == ["classifier.bias", "classifier.weight"]
    assert ours.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        ids, mask = enc["input_ids"], enc["attention_mask"]
        delta = _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state)
        assert ours(ids, mask).shape == (4, 2)
    print(f"MiniLM max|delta| last hidden state: {delta:.2e}")
    assert delta <= 1e-4


@pytest.fixture(scope="module")
def smollm2():
    name = "smollm2-135m"
    hf = transformers.LlamaForCausalLM.from_pretrained(resolve_checkpoint(name)).eval()
    ours = convert.build_gpt(name, num_labels=2).eval()
    return load_tokenizer(name), hf, ours


@pytest.mark.slow
def test_smollm2_matches_hf(smollm2):
    tokenizer, hf, ours = smollm2
    assert ours.config.pad_token_id == tokenizer.pad_token_id == 2
    assert (ours.config.n_head, ours.config.n_kv_head, ours.fresh_heads) == (9, 3, ["score.weight"])
    deltas = {}
    with torch.no_grad():
        for side in ("right", "left"):
            tokenizer.padding_side = side
            enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            expected = hf.model(ids, attention_mask=mask, position_ids=positions).last_hidden_state
            deltas[side] = _maxdiff(ours.hidden_states(ids, mask), expected, mask)
            lm = _maxdiff(ours.lm_logits(ours.hidden_states(ids, mask)), hf(ids, attention_mask=mask, position_ids=positions).logits, mask)
            deltas[side + " lm logits"] = lm
            deltas[side + " class logits"] = ours(ids, mask)
    tokenizer.padding_side = "right"
    print("SmolLM2 max|delta|:", {k: v for k, v in deltas.items() if isinstance(v, float)})
    assert deltas["right"] <= 1e-4 and deltas["left"] <= 1e-4
    assert _maxdiff(deltas["right class logits"], deltas["left class logits"]) <= 1e-4


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_hf(smollm2):
    tokenizer, hf, ours = smollm2
    prompt = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    got = ours.generate(prompt, max_new_tokens=20)
    print("SmolLM2 says:", repr(tokenizer.decode(got[0, prompt.size(1):])))
    assert expected.size(1) > prompt.size(1) + 5  # HF stops early only at end-of-text
    assert torch.equal(got[:, : expected.size(1)], expected)


@pytest.mark.slow
def test_gpt_scratch_yaml_builds_the_lightning_module():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="gpt_scratch", overrides=["net.pretrained=false", "+net.n_layer=1", "+net.n_embd=64", "+net.n_head=4"])
    module = instantiate(cfg, _recursive_=False, **SENTIMENT)
    net = module.net
    assert isinstance(net, gpt.GPTForSequenceClassification) and net.config.positions == "rotary" and net.config.pad_token_id == 2
    ids = torch.randint(0, 49152, (2, 6))
    assert module(ids, torch.ones_like(ids)).shape == (2, 2)
