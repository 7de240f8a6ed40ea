"""The LightningModule on tiny random BERT and GPT-2: it learns, it decays the right weights, pools the right token."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from bertgpt.data.reviews import IMDBDataModule
from bertgpt.tasks.classification import SequenceClassifier


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
