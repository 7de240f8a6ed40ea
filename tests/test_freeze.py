"""Freezing the bottom of a backbone (training/freeze.py, `model.freeze`) on tiny random classifiers of every family:
exactly the embeddings and the lowest blocks stop training, the backward pass ends above them (fewer FLOPs a step),
and `src/train.py model.freeze.*` leaves those weights where the checkpoint had them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import bench_script, logits_of, metrics_of, only_run, run_script, tiny_net, tiny_overrides

from bertgpt.errors import UserError
from bertgpt.tasks.classification import SequenceClassifier
from bertgpt.training.freeze import freeze_bottom
from bertgpt.training.strategies import blocks_of

# kind -> what model.freeze.embeddings=true model.freeze.blocks=1 freezes: every parameter under these names
FROZEN = {
    "hf_bert": ("bert.embeddings.", "bert.encoder.layer.0."),
    "hf_gpt2": ("transformer.wte.", "transformer.wpe.", "transformer.h.0."),
    "hf_llama": ("model.embed_tokens.", "model.layers.0."),
    "our_bert": ("embeddings.", "encoder.0."),
    "our_gpt": ("transformer.wte.", "transformer.h.0."),
}


def output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("kind", list(FROZEN))
def test_the_embeddings_and_the_lowest_block_get_no_gradient_and_the_rest_does(kind, batch):
    net = tiny_net(kind)
    frozen = freeze_bottom(net, embeddings=True, blocks=1)
    expected = sorted(name for name, _ in net.named_parameters() if name.startswith(FROZEN[kind]))
    assert frozen == expected and any(name.startswith(FROZEN[kind][0]) for name in frozen)
    needs_grad = {}  # each block's output: does autograd track it? Below the lowest layer that trains it must not
    for i, block in enumerate(blocks_of(net)):
        block.register_forward_hook(lambda module, args, output, i=i: needs_grad.__setitem__(i, output_tensor(output).requires_grad))
    F.cross_entropy(logits_of(net, batch), torch.tensor([0, 1, 2, 0])).backward()
    assert needs_grad == {0: False, 1: True}
    for name, param in net.named_parameters():
        assert (param.grad is None) == (name in frozen), name


def test_a_frozen_block_costs_its_forward_only(tiny_bert, monkeypatch):
    """bench_train counts a step's FLOPs on the net our arm trains: each frozen block takes its backward off."""
    bench = bench_script("bench_train")
    shape = (4, 32)

    def step_flops(*overrides: str) -> int:
        monkeypatch.setattr(bench, "extra_overrides", list(overrides))
        return bench.StepFlops(bench.ours_net("bert", tiny_bert))(shape)

    full = step_flops()
    forward = step_flops("model.freeze.embeddings=true", "model.freeze.blocks=2")  # only the head trains
    one = step_flops("model.freeze.embeddings=true", "model.freeze.blocks=1")
    assert full > one > forward
    assert forward < 0.45 * full  # a trained block's backward is about twice its forward
    assert one - forward == pytest.approx((full - forward) / 2, rel=0.2)  # half the blocks, about half the backward


def test_bad_freeze_settings_name_the_fix(tiny_bert):
    net = {"_target_": "bertgpt.models.library.build", "checkpoint": tiny_bert}
    with pytest.raises(UserError, match="has 2 Transformer blocks; freeze at most 2"):
        SequenceClassifier(net=net, labels=["neg", "pos"], freeze={"embeddings": True, "blocks": 3})
    with pytest.raises(UserError, match=r"model.freeze.blocks=-1"):
        SequenceClassifier(net=net, labels=["neg", "pos"], freeze={"embeddings": False, "blocks": -1})
    with pytest.raises(UserError, match="LoRA already freezes the whole backbone"):
        SequenceClassifier(net=net, labels=["neg", "pos"], freeze={"embeddings": True, "blocks": 0},
                           lora={"r": 4, "alpha": None, "dropout": 0.0, "target_modules": None})
    unfrozen = SequenceClassifier(net=net, labels=["neg", "pos"], freeze={"embeddings": False, "blocks": 0})
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_train_with_frozen_bottom_keeps_those_weights(tiny_bert, workdir, tmp_path):
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, tmp_path, "model.freeze.embeddings=true", "model.freeze.blocks=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(tmp_path)
    metrics = metrics_of(run)
    assert 0 < metrics["params/trainable"] < metrics["params/total"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    pretrained = transformers.BertForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    for name, tensor in pretrained.items():
        if name.startswith(("bert.embeddings.", "bert.encoder.layer.0.")):  # after 2 epochs, where they started
            assert torch.equal(state[f"net.{name}"], tensor), name
        elif name.startswith("bert.encoder.layer.1.") and name.endswith("weight"):  # trained
            assert not torch.equal(state[f"net.{name}"], tensor), name
