"""The hand-written BERT and GPT compute what Hugging Face computes on the same weights.

Tiny random HF models (built in memory, vocab 100) check every code path in well under a second each;
the `slow` tests load the real bundled all-MiniLM-L6-v2 and SmolLM2-135M.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bertgpt.models import bert, gpt
from bertgpt.models.hub import resolve_checkpoint
from bertgpt.models.library import load_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
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
    return transformers.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, pad_token_id=PAD, num_labels=3, **kw,
    )


def test_bert_matches_hf_bertmodel(batch):
    torch.manual_seed(0)
    hf = transformers.BertModel(tiny_bert_config()).eval()  # no `bert.` prefix, no classifier: MiniLM's layout
    ours = bert.Bert.from_hf_state_dict(hf.config, hf.state_dict()).eval()
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
    ours = bert.Bert.from_hf_state_dict(hf.config, hf.state_dict()).eval()
    assert ours.fresh_heads == []
    ids, mask = batch
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf.bert(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        logits = ours(ids, mask)
        assert logits.shape == (4, 3)
        assert _maxdiff(logits, hf(ids, attention_mask=mask).logits) <= 1e-5
    two_labels = bert.Bert.from_hf_state_dict(hf.config, hf.state_dict(), num_labels=2)  # a head for 3: fresh
    assert sorted(two_labels.fresh_heads) == ["classifier.bias", "classifier.weight"]


def test_bert_training_mode_matches_hf_gradients(batch):
    """Same loss and gradients with dropout off: the backward pass (fused qkv included) is right too."""
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ).train()
    ours = bert.Bert.from_hf_state_dict(hf.config, hf.state_dict()).train()
    ids, mask = batch
    labels = torch.tensor([0, 1, 2, 1])
    torch.nn.functional.cross_entropy(ours(ids, mask), labels).backward()
    torch.nn.functional.cross_entropy(hf(ids, attention_mask=mask).logits, labels).backward()
    q = hf.bert.encoder.layer[0].attention.self.query.weight.grad
    assert _maxdiff(ours.encoder[0].attention.qkv.weight.grad[:32], q) <= 1e-5
    assert _maxdiff(ours.embeddings.word_embeddings.weight.grad, hf.bert.embeddings.word_embeddings.weight.grad) <= 1e-5


# ----- GPT: GPT-2 and Llama layouts ----------------------------------------------------------------------------

def tiny_decoder(kind: str, head: bool):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, pad_token_id=PAD, num_labels=3,
        )
        cls = transformers.GPT2ForSequenceClassification if head else transformers.GPT2Model
    else:  # SmolLM2's shape in small: grouped-query attention (6 heads share 2 kv heads), tied, no biases
        config = transformers.LlamaConfig(
            vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, max_position_embeddings=32, pad_token_id=PAD, num_labels=3, tie_word_embeddings=True,
            rope_theta=1000.0, rms_norm_eps=1e-5,
        )
        cls = transformers.LlamaForSequenceClassification if head else transformers.LlamaModel
    return cls(config).eval()


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_matches_hf(kind, padding, batch):
    hf = tiny_decoder(kind, head=True)
    ours = gpt.GPT.from_hf_state_dict(hf.config, hf.state_dict()).eval()
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


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_bare_model_and_padding_sides_agree(kind, batch):
    """A bare `GPT2Model` / `LlamaModel` state dict loads (score starts fresh), and left padding gives
    the same logits as right padding, without being told position ids."""
    hf = tiny_decoder(kind, head=False)
    ours = gpt.GPT.from_hf_state_dict(hf.config, hf.state_dict(), num_labels=2).eval()
    assert ours.fresh_heads == ["score.weight"]
    ids, mask = batch
    left_ids, left_mask = to_left_padding(ids, mask)
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state, mask) <= 1e-5
        assert _maxdiff(ours.hidden_states(ids), hf(ids).last_hidden_state) <= 1e-5  # no mask at all
        assert _maxdiff(ours(left_ids, left_mask), ours(ids, mask)) <= 1e-5
        assert torch.isfinite(ours.hidden_states(left_ids, left_mask)).all()  # left pads attend to nothing real


def test_gpt2_generate_matches_hf_greedy():
    hf = transformers.GPT2LMHeadModel(tiny_decoder("gpt2", head=False).config).eval()
    ours = gpt.GPT.from_hf_state_dict(hf.config, hf.state_dict()).eval()
    prompt = torch.tensor([[5, 17, 42, 8]])
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                           eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(ours.generate(prompt, max_new_tokens=12), expected)


def test_config_overrides_resize_a_random_model():
    config = gpt.GPTConfig.from_hf(tiny_decoder("llama", head=False).config, n_head=3, n_embd=24)
    assert (config.head_dim, config.n_kv_head, config.n_inner) == (8, 1, 40)  # derived, keeping the proportions
    with pytest.raises(Exception, match="unknown model.net option"):
        bert.BertConfig.from_hf(tiny_bert_config(), n_layers=2)


def test_bert_build_classifier_random_from_bundled_config():
    net = bert.build_classifier("all-minilm-l6-v2", num_labels=2, pretrained=False, n_layer=1, n_embd=64, n_head=4)
    assert (net.config.vocab_size, net.config.n_inner, net.config.pad_token_id) == (30522, 256, 0)
    ids = torch.randint(0, 30522, (2, 6))
    assert net(ids, torch.ones_like(ids)).shape == (2, 2)


def test_bert_scratch_yaml_builds_the_lightning_module():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="bert_scratch", overrides=["net.pretrained=false", "+net.n_layer=1"])
    module = instantiate(cfg, _recursive_=False)
    assert isinstance(module.net, bert.Bert) and len(module.net.encoder) == 1
    ids = torch.randint(0, 30522, (2, 6))
    assert module(ids, torch.ones_like(ids)).shape == (2, 2)


def test_build_classifier_from_saved_folders(tiny_bert, tiny_gpt2):
    """build_classifier's own path: a folder saved by `save_pretrained` (conftest's tiny models), the
    tokenizer's pad id, a `BertForSequenceClassification` head reused, GPT-2's `transformer.` prefix and
    Conv1D weights, and its missing pad token replaced by end-of-text."""
    ids = torch.tensor([[5, 9, 14, 3, 8], [7, 2, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ours = bert.build_classifier(tiny_bert, num_labels=2).eval()
    hf = transformers.BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    assert ours.fresh_heads == [] and ours.config.pad_token_id == load_tokenizer(tiny_bert).pad_token_id
    with torch.no_grad():
        assert _maxdiff(ours(ids, mask), hf(ids, attention_mask=mask).logits) <= 1e-5

    ours = gpt.build_classifier(tiny_gpt2, num_labels=2).eval()
    hf = transformers.GPT2Model.from_pretrained(tiny_gpt2).eval()
    tokenizer = load_tokenizer(tiny_gpt2)
    assert ours.fresh_heads == ["score.weight"]
    assert ours.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        assert _maxdiff(ours.hidden_states(ids, mask), hf(ids, attention_mask=mask).last_hidden_state, mask) <= 1e-5


# ----- the real bundled weights --------------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_matches_hf():
    name = "all-minilm-l6-v2"
    tokenizer = load_tokenizer(name)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(resolve_checkpoint(name)).eval()
    ours = bert.build_classifier(name, num_labels=2).eval()
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
    ours = gpt.build_classifier(name, num_labels=2).eval()
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
    module = instantiate(cfg, _recursive_=False)
    net = module.net
    assert isinstance(net, gpt.GPT) and net.config.positions == "rotary" and net.config.pad_token_id == 2
    ids = torch.randint(0, 49152, (2, 6))
    assert module(ids, torch.ones_like(ids)).shape == (2, 2)
