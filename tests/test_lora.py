"""LoRA through peft (models/lora.py) on tiny random library (BERT, GPT-2, Llama) and hand-written (bert.py,
gpt.py) classifiers: only the adapters and the head train, the merged model computes what the adapted one
does and exports, a checkpoint rebuilds, and `src/train.py model.lora.r=4` runs through eval and predict."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import LABELS, PAD, logits_of, metrics_of, only_run, run_script, tiny_net, tiny_overrides

from bertgpt.errors import UserError
from bertgpt.models import bert, gpt
from bertgpt.models.convert import to_hf
from bertgpt.models.lora import add_lora, merge_lora
from bertgpt.tasks.classification import SequenceClassifier
from bertgpt.training.optim import weight_decay_groups

# kind -> the layers its adapters go on by default, and its head
FAMILIES = {
    "hf_bert": ({"query", "value"}, "classifier"),
    "hf_gpt2": ({"c_attn"}, "score"),
    "hf_llama": ({"q_proj", "v_proj"}, "score"),
    "our_bert": ({"qkv"}, "classifier"),
    "our_gpt": ({"c_attn"}, "score"),
}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_one_step_moves_the_adapters_and_the_head_only(kind, batch):
    targets, head = FAMILIES[kind]
    net = add_lora(tiny_net(kind), r=4, dropout=0.0)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in net.named_modules() if name.endswith(".lora_A")}
    assert adapted == targets
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or f"model.{head}." in name for name in trainable), trainable
    assert any(f"model.{head}." in name for name in trainable)
    groups = weight_decay_groups(net, 0.01)  # what the optimizer gets: the trainable parameters, nothing else
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in net.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    F.cross_entropy(logits_of(net.train(), batch), torch.tensor([0, 1, 2, 1])).backward()
    optimizer.step()
    after = dict(net.named_parameters())
    for name, p in after.items():
        changed = not torch.equal(p, before[name])
        if name not in trainable:
            assert not changed, f"frozen {name} moved"
        elif ".lora_B" in name or f"model.{head}." in name:  # lora_A has no gradient until B leaves 0
            assert changed, f"{name} did not train"
    assert len(trainable) < len(after) and sum(after[n].numel() for n in trainable) < 0.2 * sum(p.numel() for p in after.values())


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_merged_model_computes_the_same_and_exports(kind, batch, tmp_path):
    net = add_lora(tiny_net(kind), r=4, alpha=16, dropout=0.1)
    with torch.no_grad():  # B starts at 0: give the adapters an update to merge
        for name, p in net.named_parameters():
            if ".lora_B" in name:
                p.normal_(std=0.2)
        net.eval()
        adapted = logits_of(net, batch)
        base = type(net.get_base_model())
        with net.disable_adapter():
            assert (logits_of(net, batch) - adapted).abs().max() > 1e-3  # the updates change the outputs
        merged = merge_lora(net)
        assert type(merged) is base and not any("lora" in k or "base_layer" in k for k in merged.state_dict())
        assert all(p.requires_grad for p in merged.parameters())
        assert (logits_of(merged, batch) - adapted).abs().max() <= 1e-5
        if kind.startswith("hf_"):  # the export helper's path: save_pretrained, then the library loads it
            merged.save_pretrained(tmp_path)
            exported = base.from_pretrained(tmp_path).eval()
        else:  # ours: convert.to_hf gives the library's config and names
            config, state_dict = to_hf(merged)
            exported = transformers.AutoModelForSequenceClassification.from_config(config).eval()
            exported.load_state_dict(state_dict)
        assert (logits_of(exported, batch) - adapted).abs().max() <= 1e-5


@pytest.mark.parametrize("kind, token_class, head", [
    ("hf_bert", transformers.BertForTokenClassification, "classifier"),
    ("hf_gpt2", transformers.GPT2ForTokenClassification, "classifier"),
    ("hf_llama", transformers.LlamaForTokenClassification, "score"),
    ("our_bert", bert.BertForTokenClassification, "classifier"),
    ("our_gpt", gpt.GPTForTokenClassification, "classifier"),
])
def test_token_heads_train_in_full(kind, token_class, head, batch):
    """task=pos: the token head of each family is found by its name and trains; logits stay (B, T, labels)."""
    net = add_lora(token_class(tiny_net(kind).config), r=2)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert {name for name in trainable if ".lora_" not in name} == {
        f"base_model.model.{head}.{w}" for w, _ in getattr(net.get_base_model(), head).named_parameters()}
    assert logits_of(net, batch).shape == (4, 10, LABELS)


def test_a_net_without_lora_is_left_alone(tiny_bert):
    model = SequenceClassifier(net={"_target_": "bertgpt.models.library.build", "checkpoint": tiny_bert}, labels=["neg", "pos"],
                               lora={"r": None, "alpha": None, "dropout": 0.1, "target_modules": None})
    assert type(model.net) is transformers.BertForSequenceClassification
    assert merge_lora(model.net) is model.net and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("builder", ["bertgpt.models.library.build", "bertgpt.models.convert.build_bert", "bertgpt.models.convert.build_gpt"])
def test_classifier_with_lora_rebuilds_from_its_hyperparameters(builder, tiny_bert, tiny_gpt2, batch):
    """What pipeline.load_checkpoint does: the module again from its hparams, then the state dict, strictly."""
    checkpoint = tiny_gpt2 if builder.endswith("gpt") else tiny_bert
    lora = {"r": 4, "alpha": None, "dropout": 0.1, "target_modules": None}
    model = SequenceClassifier(net={"_target_": builder, "checkpoint": checkpoint}, labels=["neg", "pos"], lora=lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B" in name:
                p.normal_(std=0.2)
    rebuilt = SequenceClassifier(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())
    ids, mask = batch
    ids = ids % 90 + (ids != PAD)  # ids in both vocabularies, pads kept
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask), rebuilt.eval()(ids, mask))
    assert any(".lora_A." in k for k in model.state_dict())


def test_a_wrong_target_names_the_layers_that_exist():
    with pytest.raises(UserError) as err:
        add_lora(tiny_net("our_gpt"), r=4, target_modules=["query", "value"])
    message = str(err.value)
    assert "'query' is not a linear layer of GPTForSequenceClassification" in message and "\n" not in message
    assert "['c_attn', 'c_fc', 'c_proj']" in message  # the head (score) is not offered: it trains in full
    with pytest.raises(UserError, match="'ln_1' is not a linear layer"):  # a module, but not one LoRA adapts
        add_lora(tiny_net("our_gpt"), r=4, target_modules="ln_1")
    with pytest.raises(UserError, match="model.lora.r=0"):
        add_lora(tiny_net("our_gpt"), r=0)


def test_all_linear_adapts_every_body_layer_but_not_the_head():
    net = add_lora(tiny_net("our_bert"), r=2, target_modules="all-linear")
    adapted = {name.rsplit(".", 1)[-1] for name, _ in net.named_modules() if hasattr(_, "lora_A") and name}
    assert adapted == {"qkv", "dense", "intermediate", "output", "pooler"}


@pytest.fixture(scope="module")
def lora_run(tiny_bert, workdir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("lora-logs")
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, "model.lora.r=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run(logs)


def test_train_with_lora_keeps_the_backbone_and_trains_the_adapters(lora_run, tiny_bert):
    metrics = metrics_of(lora_run)
    assert metrics["params/trainable"] < 0.05 * metrics["params/total"]  # tiny BERT: 4 adapters and the head
    state = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    pretrained = transformers.BertForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    for name, tensor in pretrained.items():  # after 2 epochs every pretrained weight is where it started
        if not name.startswith("classifier."):
            wrapped = name.replace(".query.", ".query.base_layer.").replace(".value.", ".value.base_layer.")
            assert torch.equal(state[f"net.base_model.model.{wrapped}"], tensor), name
    lora_b = [v for k, v in state.items() if ".lora_B." in k]
    assert len(lora_b) == 4 and all(v.abs().max() > 0 for v in lora_b)  # B starts at 0: these trained
    assert not torch.equal(state["net.base_model.model.classifier.weight"], pretrained["classifier.weight"])


def test_eval_and_predict_read_the_lora_checkpoint(lora_run, tmp_path):
    metrics = metrics_of(lora_run)
    result = run_script("eval", f"ckpt_path={metrics['best_checkpoint']}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_run,) = (tmp_path / "eval" / "runs").iterdir()
    assert json.loads((eval_run / "metrics.json").read_text())["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    result = run_script("predict", f"ckpt_path={lora_run}/checkpoints/last.ckpt", "text=a superb and brilliant film", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    label, probability, text = result.stdout.strip().split("\t")
    assert label in ("positive", "negative") and 0.5 <= float(probability) <= 1 and text == "a superb and brilliant film"


def test_train_with_a_wrong_target_exits_2_with_one_line(tiny_bert, workdir, tmp_path):
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, tmp_path, "model.lora.r=4", "model.lora.target_modules=[q_proj]"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: model.lora.target_modules: 'q_proj' is not a linear layer of BertForSequenceClassification" in result.stderr
    assert "'query'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("model, adapted", [("bert", "query"), ("bert_scratch", "qkv")])
def test_the_train_bench_counts_our_lora_step_on_the_net_we_train(tiny_bert, monkeypatch, model, adapted):
    """bench_train's utilisation is FLOPs per second: a LoRA arm's step must be counted on the net our arm trains,
    its adapters where that net has them (the library's `query`, our stacked `qkv`) and its frozen weights getting
    no gradient, not on the full fine-tune's."""
    from conftest import bench_script

    bench = bench_script("bench_train")
    shape = (2, 16)
    full = bench.StepFlops(bench.ours_net(model, tiny_bert))
    if model == "bert":  # the library's arms train the same model as ours, so their FLOPs are the same count
        assert bench.StepFlops(bench.classifier(tiny_bert, True, PAD))(shape) == full(shape)
    monkeypatch.setattr(bench, "extra_overrides", ["model.lora.r=4", "model.lora.dropout=0.0"])
    lora = bench.StepFlops(bench.ours_net(model, tiny_bert))
    trainable = [name for name, p in lora.model.named_parameters() if p.requires_grad]
    assert any(f"{adapted}.lora_A" in name for name in trainable)
    assert all("lora_" in name or "classifier" in name for name in trainable), trainable
    # Of forward + backward's three matmuls per frozen weight (the forward, the input's gradient, the weight's),
    # the weight's goes: about a third less, the rank-4 adapters adding a little back.
    assert 0.55 < lora(shape) / full(shape) < 0.8
