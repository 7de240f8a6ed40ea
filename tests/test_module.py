"""The LightningModule on tiny random BERT and GPT-2: it learns, it decays the right weights, pools the right token."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import only_run, run_script, tiny_net, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertgpt.data.reviews import IMDBDataModule
from bertgpt.errors import UserError
from bertgpt.tasks.classification import SequenceClassifier
from bertgpt.training.optim import weight_decay_groups


def classifier(checkpoint: str, **kwargs) -> SequenceClassifier:
    net = {"_target_": "bertgpt.models.library.build", "checkpoint": checkpoint}
    return SequenceClassifier(net=net, labels=IMDBDataModule.labels, **kwargs)


def optimizers_for(model: SequenceClassifier, total_steps: int) -> dict:
    model._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)  # all the schedule asks of a Trainer
    return model.configure_optimizers()


def fit(model, datamodule, epochs: int) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_training_drives_the_loss_down_on_a_separable_set(fixture, request, toy_csv, tmp_path):
    checkpoint = request.getfixturevalue(fixture)
    L.seed_everything(0)
    dm = IMDBDataModule(tokenizer=checkpoint, path=str(toy_csv), batch_size=16, max_length=32, cache_dir=str(tmp_path))
    model = classifier(checkpoint, lr=3e-3, warmup_ratio=0.1)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = model.eval().step(batch)[0].item()
    trainer = fit(model.train(), dm, epochs=6)
    metrics = trainer.callback_metrics
    assert metrics["val/loss"].item() < 0.5 * before, (before, metrics)
    assert metrics["val/acc"].item() >= 0.9
    assert metrics["val/acc_best"].item() >= metrics["val/acc"].item()


def test_weight_decay_skips_biases_and_norms(tiny_bert):
    model = classifier(tiny_bert, weight_decay=0.01)
    config = optimizers_for(model, total_steps=10)
    optimizer = config["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "net.bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert "net.bert.encoder.layer.0.attention.self.query.bias" in plain
    assert "net.bert.embeddings.LayerNorm.weight" in plain
    assert optimizer.defaults["lr"] == 2e-5 and optimizer.defaults["eps"] == 1e-8
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_linear_schedule_with_warmup(tiny_bert):
    model = classifier(tiny_bert, warmup_ratio=0.2)
    config = optimizers_for(model, total_steps=10)
    scheduler = config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(config["optimizer"].param_groups[0]["lr"])
        config["optimizer"].step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(2e-5)  # warmup over 2 steps
    assert lrs[2:] == pytest.approx([2e-5 * (10 - s) / 8 for s in range(2, 10)])  # then linear decay to 0


# kind -> (its embeddings' parameter names start with one of these, block i's with this pattern)
LAYERS = {
    "hf_bert": (("bert.embeddings.",), "bert.encoder.layer.{}."),
    "hf_gpt2": (("transformer.wte.", "transformer.wpe."), "transformer.h.{}."),
    "hf_llama": (("model.embed_tokens.",), "model.layers.{}."),
    "our_bert": (("embeddings.",), "encoder.{}."),
    "our_gpt": (("transformer.wte.",), "transformer.h.{}."),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_wise_rate_decay_gives_each_layer_its_share_of_the_rate(kind):
    """decay 0.5 over two blocks: the head at the full rate, block 1 at 0.5, block 0 at 0.25, the embeddings at
    0.125; within each layer, weight decay on the weights only; every trainable parameter in exactly one group."""
    net = tiny_net(kind)
    embeddings, block = LAYERS[kind]
    groups = weight_decay_groups(net, 0.01, layer_lr_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(scale) == len(list(net.parameters()))
    for name, param in net.named_parameters():
        expected = (0.125 if name.startswith(embeddings) else 0.25 if name.startswith(block.format(0))
                    else 0.5 if name.startswith(block.format(1)) else 1.0)
        assert scale[id(param)] == expected, name
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]
    names = [g["name"] for g in groups]  # what LearningRateMonitor logs each group's rate under
    layers = ["top", "block2", "block1", "embeddings"]
    assert [n for n in names if not n.endswith("-no_decay")] == layers and len(set(names)) == len(names)
    assert {n for n in names if n.endswith("-no_decay")} <= {f"{layer}-no_decay" for layer in layers}
    for g in groups:
        assert (g["weight_decay"] > 0) == all(p.ndim >= 2 for p in g["params"])
    assert [(g["lr_scale"], "name" in g) for g in weight_decay_groups(net, 0.01)] == [(1.0, False)] * 2  # 1: BERT's two groups


def test_layer_wise_rates_follow_the_schedule_and_bad_decays_are_refused(tiny_bert):
    model = classifier(tiny_bert, warmup_ratio=0.2, layer_lr_decay=0.8)
    config = optimizers_for(model, total_steps=10)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    top = 2e-5 * 6 / 8  # step 4 of a 2-step warmup and a decay to 0 at step 10
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([top * 0.8**k for k in (3, 2, 1, 0)])
    head = {id(p) for p in model.net.classifier.parameters()}
    assert all(g["lr"] == pytest.approx(top) for g in optimizer.param_groups if head & {id(p) for p in g["params"]})
    for bad in (0, 1.5, -0.5, True):
        with pytest.raises(UserError, match=f"model.layer_lr_decay={bad}: each layer's rate is this times"):
            classifier(tiny_bert, layer_lr_decay=bad)
    with pytest.raises(UserError, match="Linear has no Transformer blocks"):
        weight_decay_groups(torch.nn.Linear(2, 2), 0.01, layer_lr_decay=0.5)


def test_train_logs_each_layers_rate_under_its_name(tiny_bert, workdir, tmp_path):
    """`src/train.py model.layer_lr_decay=0.5`: TensorBoard gets each layer's rate (LearningRateMonitor reads the
    groups' names), the embeddings' an eighth of the top's at every step of the schedule."""
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, tmp_path, "model.layer_lr_decay=0.5", "test=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    (events,) = (only_run(tmp_path) / "tensorboard").iterdir()
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    rates = {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"] if tag.startswith("lr-AdamW/")}
    assert {"lr-AdamW/top", "lr-AdamW/block2", "lr-AdamW/block1", "lr-AdamW/embeddings"} <= set(rates), sorted(rates)
    assert len(rates["lr-AdamW/top"]) > 2 and len(set(rates["lr-AdamW/top"])) > 1  # the schedule moved it
    assert rates["lr-AdamW/embeddings"] == pytest.approx([rate / 8 for rate in rates["lr-AdamW/top"]])
    assert rates["lr-AdamW/block1"] == pytest.approx([rate / 4 for rate in rates["lr-AdamW/top"]])


def test_decoder_reads_the_last_real_token_whatever_the_padding(tiny_gpt2):
    model = classifier(tiny_gpt2).eval()
    pad = model.net.config.pad_token_id
    ids = torch.tensor([[5, 9, 17, 4]])
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))
        right = model(torch.tensor([[5, 9, 17, 4, pad, pad]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert torch.allclose(alone, right, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_still_clips_the_gradients(precision, tiny_bert, toy_csv, tmp_path):
    """Lightning will not clip for a fused optimizer under mixed precision; the module clips itself, to the norm asked."""
    norms = []

    class ReadNorm(L.Callback):  # after the step: the gradients the optimizer used are still there
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in pl_module.parameters() if p.grad is not None])).item())

    dm = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), batch_size=16, max_length=32, cache_dir=str(tmp_path))
    model = classifier(tiny_bert, fused=True)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", precision=precision, gradient_clip_val=1e-3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ReadNorm()])
    trainer.fit(model, datamodule=dm)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(norms) == 3 and all(abs(n - 1e-3) < 1e-5 for n in norms), norms


def test_attention_dropout_is_set_on_library_and_own_models(tiny_bert, tiny_gpt2):
    from bertgpt.models import convert, library

    assert library.build(tiny_bert, attn_dropout=0.0).config.attention_probs_dropout_prob == 0.0
    assert library.build(tiny_bert).config.attention_probs_dropout_prob == 0.1  # None: the checkpoint's
    assert library.build(tiny_gpt2, attn_dropout=0.0).config.attn_pdrop == 0.0
    assert convert.build_bert(tiny_bert, attn_dropout=0.0).config.attn_dropout == 0.0
    assert convert.build_gpt(tiny_gpt2, attn_dropout=0.0).config.attn_dropout == 0.0


def test_hidden_dropout_is_set_on_library_and_own_models(tiny_bert, tiny_gpt2):
    from bertgpt.models import convert, library

    bert = library.build(tiny_bert, dropout=0.0)
    assert bert.config.hidden_dropout_prob == 0.0 and bert.config.attention_probs_dropout_prob == 0.1
    assert bert.bert.embeddings.dropout.p == bert.bert.encoder.layer[0].output.dropout.p == bert.dropout.p == 0.0  # the head's follows
    assert library.build(tiny_bert, dropout=None).config.hidden_dropout_prob == 0.1  # None: the checkpoint's
    gpt2 = library.build(tiny_gpt2, dropout=0.0).config
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == 0.0 and gpt2.attn_pdrop == 0.1
    assert convert.build_bert(tiny_bert, dropout=0.0).config.dropout == 0.0
    assert convert.build_bert(tiny_bert, dropout=None).config.dropout == 0.1
    assert convert.build_gpt(tiny_gpt2, dropout=0.0).config.dropout == 0.0


def test_model_summary_counts_one_full_length_forward(tiny_bert, toy_csv, tmp_path):
    """Lightning's summary printed "Total FLOPs: 0" without an example input. Given one item at max_length, it counts
    that item's forward: the encoder's matmuls over all T positions, attention's two T x T products per layer, and
    the pooler and head on the [CLS] position alone. Not for a compiled net (one more shape to compile)."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from bertgpt.pipeline import summarise_flops

    T, d, layers, inner = 32, 32, 2, 64  # tiny_bert's sizes
    datamodule = IMDBDataModule(tokenizer=tiny_bert, path=str(toy_csv), max_length=T, cache_dir=str(tmp_path))
    model = classifier(tiny_bert)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    summarise_flops(model, datamodule, trainer, compiled=True)
    assert model.example_input_array is None
    summarise_flops(model, datamodule, trainer, compiled=False)
    matmul = lambda m, k, n: 2 * m * k * n  # noqa: E731
    per_layer = matmul(T, d, 3 * d) + matmul(T, d, d) + matmul(T, d, inner) + matmul(T, inner, d) + 2 * matmul(T, d, T)
    assert ModelSummary(model).total_flops == layers * per_layer + matmul(1, d, d) + matmul(1, d, 2)
    assert model.training  # the summary's eval-mode forward leaves the module as it found it
