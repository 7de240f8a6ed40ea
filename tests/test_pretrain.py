"""Pretraining our BERT (masked LM) and our GPT (next token): masking, targets, data, export, the CLI.

Tiny models (2 layers, 32 wide) on the bundled WordPiece vocabulary; the end-to-end runs take a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import run_script, toy_reviews
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bertgpt.data import tokenize
from bertgpt.data.blocks import TextBlocks, cut_blocks, documents
from bertgpt.data.reviews import IMDBDataModule
from bertgpt.experiments.pretrain import export
from bertgpt.models import convert
from bertgpt.tasks.language_model import (
    IGNORE,
    LanguageModel,
    mask_tokens,
    next_token_labels,
)
from bertgpt.training.strategies import recompute_blocks

TOKENIZER = "all-minilm-l6-v2"
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_inner=64, block_size=32, dropout=0.0)
TINY_CLI = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.n_inner=64", "data.block_size=32"]


@pytest.fixture(scope="module")
def models() -> dict[str, LanguageModel]:
    torch.manual_seed(0)
    return {objective: LanguageModel(objective, TOKENIZER, **TINY).eval() for objective in ("mlm", "clm")}


@pytest.fixture(scope="module")
def blocks(models) -> torch.Tensor:
    """Four blocks of 32 tokens cut from real reviews, as the data module makes them."""
    tokenizer = models["mlm"].tokenizer
    texts, _ = toy_reviews(40)
    packed = tokenize.pack(tokenizer(texts, add_special_tokens=False)["input_ids"], [])
    return cut_blocks(packed, [tokenizer.cls_token_id], [tokenizer.sep_token_id], 32)[:4]


@pytest.fixture
def text_file(tmp_path) -> Path:
    texts, _ = toy_reviews(300, seed=3)
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


# ----- the objectives ----------------------------------------------------------------------------------------

def test_masking_is_80_10_10_of_15_percent_and_spares_special_tokens():
    V, MASK, PAD, CLS, SEP = 30522, 103, 0, 101, 102
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (64, 512), generator=g)
    ids[:, 0], ids[:, 100::50], ids[:, -40:] = CLS, SEP, PAD  # a block start, separators, padding
    special = torch.isin(ids, torch.tensor([PAD, CLS, SEP, MASK]))
    inputs, labels = mask_tokens(ids, special, MASK, V, 0.15, torch.Generator().manual_seed(1))

    chosen = labels != IGNORE
    assert torch.equal(labels[chosen], ids[chosen])  # a label is the original token
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])  # specials and pads never touched
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing changes outside the chosen positions
    assert chosen[~special].float().mean().item() == pytest.approx(0.15, abs=0.003)
    n = chosen.sum().item()  # ~4,500 chosen: each share below is within 3 standard deviations
    masked = (inputs[chosen] == MASK).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.015)
    assert 1 - masked - kept == pytest.approx(0.1, abs=0.015)  # a random token (rarely [MASK] or itself)


def test_mlm_loss_is_over_the_chosen_positions_only(models, blocks):
    model = models["mlm"]
    with torch.no_grad():
        loss, correct, n = model.step(blocks, torch.Generator().manual_seed(7))
        inputs, labels = model.targets(blocks, torch.Generator().manual_seed(7))  # the same draw
        logits = model.net(inputs)  # (B, T, vocab): the head at every position
    assert 0 < n == (labels != IGNORE).sum() < 0.3 * blocks.numel()
    assert (labels[blocks == model.tokenizer.cls_token_id] == IGNORE).all()
    full = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)  # ignores unchosen positions
    assert loss.item() == pytest.approx(full.item(), abs=1e-5)
    assert correct == (logits.argmax(-1) == labels).sum()


def test_clm_labels_are_the_next_tokens(models, blocks):
    assert next_token_labels(torch.tensor([[5, 6, 7, 8]])).tolist() == [[6, 7, 8, IGNORE]]
    model = models["clm"]
    with torch.no_grad():
        loss, _, n = model.step(blocks)
        logits = model.net.lm_logits(model.net.hidden_states(blocks))  # (B, T, vocab)
    assert n == blocks.size(0) * (blocks.size(1) - 1)
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten())  # position t predicts t + 1
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def loss_curve(text_file: Path, seed: int, objective: str = "mlm", steps: int = 4, recompute: bool = False, **sizes) -> list[float]:
    """The training losses of a tiny pretraining run on `text_file`, step by step."""
    L.seed_everything(seed)
    model = LanguageModel(objective, TOKENIZER, **{**TINY, **sizes})
    if recompute:
        assert recompute_blocks(model.net) == TINY["n_layer"]
    data = TextBlocks(TOKENIZER, path=str(text_file), exclude_held_out=False, block_size=32, seed=seed, batch_size=4)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    trainer = L.Trainer(max_steps=steps, logger=False, callbacks=[Record()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, precision="32-true")
    trainer.fit(model, datamodule=data)
    return losses


def test_same_seed_same_loss_curve(text_file):
    first = loss_curve(text_file, 1)
    assert len(first) == 4 and first == loss_curve(text_file, 1)
    assert first != loss_curve(text_file, 2)


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_recomputed_blocks_pretrain_to_the_same_losses(objective, text_file):
    """activation_checkpointing=true in pretraining: each block runs again in the backward pass, dropout's masks
    drawn again alike, so the updates, and every later loss, are the plain run's."""
    plain = loss_curve(text_file, 3, objective, steps=3, dropout=0.1)
    assert loss_curve(text_file, 3, objective, steps=3, recompute=True, dropout=0.1) == pytest.approx(plain, abs=1e-6)


# ----- data ----------------------------------------------------------------------------------------------------

def test_blocks_start_with_cls_and_separate_documents_with_sep():
    packed = tokenize.pack([[11, 12, 13], [21, 22], [31, 32, 33, 34], [41]], [])
    blocks = cut_blocks(packed, [101], [102], 5)
    assert blocks.tolist() == [[101, 11, 12, 13, 102], [101, 21, 22, 102, 31], [101, 32, 33, 34, 102]]  # the tail, 41 [SEP], is dropped


def test_both_objectives_see_the_same_blocks_in_the_same_order(text_file):
    def batches(seed: int) -> list[torch.Tensor]:
        data = TextBlocks(TOKENIZER, path=str(text_file), exclude_held_out=False, block_size=32, seed=seed, batch_size=8)
        data.setup()
        return list(data.train_dataloader()) + list(data.val_dataloader())

    first = batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(1)))  # the data does not depend on the objective
    assert not torch.equal(first[0], batches(2)[0])  # the seed shuffles the training blocks ...
    assert torch.equal(first[-1], batches(2)[-1])  # ... but not the validation blocks


def test_held_out_imdb_reviews_are_not_in_the_pretraining_text():
    held_out = IMDBDataModule(TOKENIZER, source="bundled").raw_splits()["val"].texts  # the fine-tune's test set
    docs = set(documents(TOKENIZER))
    assert len(held_out) == 2500 and len(docs) > 30_000  # 22,500 IMDB training reviews + 8,530 Rotten Tomatoes sentences
    assert not any(tokenize.clean(t) in docs for t in held_out)


# ----- export ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("objective, library", [("mlm", transformers.BertForMaskedLM), ("clm", transformers.GPT2LMHeadModel)])
def test_export_loads_in_transformers_with_the_same_logits(objective, library, models, tmp_path):
    model = models[objective]
    with torch.no_grad():  # no parameter left at its exact init (zero biases, unit norms) hides a wrong mapping
        for p in model.net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = export(model, tmp_path / "export")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary folder is gone
    hf, info = library.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102], [101, 2919, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, attention_mask=mask).logits
        ours = model.net(ids, mask) if objective == "mlm" else model.net.lm_logits(model.net.hidden_states(ids, mask))
    diff = (theirs - ours)[mask.bool()].abs().max().item()  # real tokens: a pad's output is never read
    assert diff < 1e-4, diff

    # What fine-tuning loads (model=bert_scratch / gpt_scratch model.net.checkpoint=<export>): the same body, right
    # padding with [PAD] = 0, and the tokenizer's limit set to the positions the model has.
    build = convert.build_bert if objective == "mlm" else convert.build_gpt
    classifier = build(str(folder)).eval()
    assert sorted(classifier.fresh_heads) == (["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"] if objective == "mlm" else ["score.weight"])
    with torch.no_grad():
        assert torch.allclose(classifier.hidden_states(ids, mask)[mask.bool()], model.net.hidden_states(ids, mask)[mask.bool()], atol=1e-5)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.pad_token_id, tokenizer.padding_side, tokenizer.model_max_length) == (0, "right", 32)


# ----- the command line ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("objective, fine_tune", [("mlm", "bert_scratch"), ("clm", "gpt_scratch")])
def test_pretrain_then_fine_tune_from_the_export(objective, fine_tune, tmp_path, toy_csv):
    run = tmp_path / "pretrain"
    result = run_script("pretrain", f"objective={objective}", "trainer.max_steps=6", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
                        "data.max_docs=60", "data.batch_size=4", "seed=1", "export_steps=[3]", f"hydra.run.dir={run}", *TINY_CLI)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    # The export after step 3 is a whole model of its own, not the final weights.
    assert metrics["exports"] == {"3": str(run / "export_step3")}
    library = transformers.AutoModelForMaskedLM if objective == "mlm" else transformers.AutoModelForCausalLM
    middle, end = (library.from_pretrained(run / folder) for folder in ("export_step3", "export"))
    assert middle.config.to_diff_dict() | {"_name_or_path": ""} == end.config.to_diff_dict() | {"_name_or_path": ""}
    assert not torch.equal(middle.get_input_embeddings().weight, end.get_input_embeddings().weight)
    for key in ("val/loss", "val/ppl", "val/token_acc", "train/samples_per_sec", "train/tokens_per_sec", "params/total"):
        assert 0 <= metrics[key] < float("inf"), key
    assert metrics["val/ppl"] == pytest.approx(2.718281828 ** metrics["val/loss"], rel=1e-4)
    assert metrics["export"] == str(run / "export") and metrics["train/steps"] == 6
    (events,) = (run / "tensorboard").iterdir()
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "val/loss", "val/ppl", "val/token_acc", "train/tokens_per_sec"):
        assert tag in scalars, (tag, scalars)
    assert any(t.startswith("lr-AdamW") for t in scalars)
    assert len(accumulator.Scalars("train/loss")) == 6
    assert len(accumulator.Scalars("val/loss")) == 2  # after step 4, and at the end of the budget (step 6)

    result = run_script("train", f"model={fine_tune}", f"model.net.checkpoint={run / 'export'}", f"data.path={toy_csv}", "data.train_size=32",
                        "data.val_size=16", "data.batch_size=16", "data.max_length=32", "logger=none", "callbacks=none",
                        "model.fused=false",  # a fused AdamW cannot clip gradients under bf16-mixed (Lightning's amp plugin)
                        f"hydra.run.dir={tmp_path / 'fine-tune'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "fine-tune" / "metrics.json").read_text())["test/acc"] <= 1


@pytest.mark.parametrize("args, message", [
    (["objective=bert"], "error: objective=bert: unknown objective. Choose one of clm"),
    (["data.path=/nonexistent/reviews.txt"], "error: data.path=/nonexistent/reviews.txt: no such file."),
    (["trainer.max_steps=-1"], "error: trainer.max_steps=-1: set the budget in steps"),
    (["trainer.max_steps=4", "export_steps=[2,4]"], "error: export_steps=[2, 4]: each is a step before the end of the budget"),
    (["activation_checkpointing=no"], "error: activation_checkpointing=no: give true or false."),
    (["activation_checkpointing=true", "trainer=fsdp", "trainer.strategy.activation_checkpointing=true"],
     "error: activation_checkpointing=true and trainer.strategy.activation_checkpointing=true would both recompute each block: keep one."),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, tmp_path):
    result = run_script("pretrain", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message) and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
