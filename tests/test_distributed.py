"""Past one device's memory: FSDP2 sharded training on 2 CPU ranks and its resume, the FSDP and DeepSpeed configs,
activation checkpointing of each block."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
import transformers
from conftest import bench_script, compose_train, metrics_of, only_run, run_script, tiny_overrides
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from bertgpt.models import bert, gpt
from bertgpt.training.strategies import BLOCKS, block_classes, blocks_of, recompute_blocks


def trainer_config(*overrides: str):
    return compose_train(*overrides).trainer


def every_backbone() -> list[torch.nn.Module]:
    """Each family of BLOCKS in small, three blocks each, with dropout where the family has it (as library.build,
    no key/value cache)."""
    hf_bert = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    gpt2 = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, pad_token_id=0, use_cache=False)
    llama = transformers.LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, pad_token_id=0, use_cache=False)
    return [
        transformers.BertForSequenceClassification(hf_bert), transformers.GPT2ForSequenceClassification(gpt2),
        transformers.LlamaForTokenClassification(llama), bert.BertForTokenClassification(bert.BertConfig(vocab_size=64, n_layer=3, n_head=2, n_embd=16, n_inner=32)),
        gpt.GPTForSequenceClassification(gpt.GPTConfig(vocab_size=64, n_layer=3, n_head=2, n_embd=16, dropout=0.1)),
    ]


def test_every_backbone_has_its_blocks_in_the_wrap_list():
    assert [len(blocks_of(m)) for m in every_backbone()] == [3] * 5
    assert len(block_classes()) == len(BLOCKS)


def loss_and_gradients(net: torch.nn.Module, input_ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same dropout masks for both runs
    out = net(input_ids=input_ids)
    loss = (out if isinstance(out, torch.Tensor) else out.logits).float().square().mean()
    loss.backward()
    return loss.item(), {name: p.grad for name, p in net.state_dict(keep_vars=True).items() if p.grad is not None}


@pytest.mark.parametrize("index", range(5), ids=["hf-bert", "gpt2", "llama", "our-bert", "our-gpt"])
def test_recomputed_blocks_give_the_same_gradients_from_a_fraction_of_the_memory(index):
    kept_bytes = bench_script("bench_activations").kept_bytes  # what autograd keeps for the backward pass
    torch.manual_seed(1)
    plain = every_backbone()[index].train()
    recomputed = copy.deepcopy(plain)
    assert recompute_blocks(recomputed) == 3
    input_ids = torch.randint(1, 64, (4, 48))
    loss, grads = loss_and_gradients(plain, input_ids)
    loss_again, grads_again = loss_and_gradients(recomputed, input_ids)
    assert loss_again == loss
    assert grads_again.keys() == grads.keys()  # the state dict keeps the plain names: checkpoints load either way
    assert all(torch.equal(grads_again[name], grads[name]) for name in grads)  # dropout's masks drawn again alike
    assert kept_bytes(recomputed, input_ids, None) < kept_bytes(plain, input_ids, None) / 3  # each block's input only


def test_recomputed_blocks_compile():
    """The wrapper composes with torch.compile (hooks on each block did not: the compiled forward saved other
    tensors than the eager recompute made). aot_eager traces what Inductor would, without building kernels."""
    torch.manual_seed(1)
    net = every_backbone()[1].train()
    recompute_blocks(net)
    net.compile(backend="aot_eager")
    for width in (16, 24):
        net(input_ids=torch.randint(1, 64, (2, width))).logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_model_without_transformer_blocks_is_refused():
    from bertgpt.errors import UserError

    with pytest.raises(UserError, match="activation_checkpointing=true: Linear has none of the Transformer blocks it recomputes"):
        recompute_blocks(torch.nn.Linear(4, 4))


@pytest.mark.slow
def test_recomputed_training_matches_the_plain_run(reference, tiny_bert, workdir):
    """activation_checkpointing=true in a whole run: the same losses, metrics and checkpoint names as without."""
    logs = workdir / "recomputed"
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, "activation_checkpointing=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Activation checkpointing: 2 Transformer blocks keep only their input" in result.stdout + result.stderr
    run = only_run(logs)
    timing = {"train/epoch_time_s", "train/samples_per_sec", "train/tokens_per_sec", "train/peak_memory_mb", "best_checkpoint"}
    assert {k: v for k, v in metrics_of(run).items() if k not in timing} == {k: v for k, v in metrics_of(reference).items() if k not in timing}
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state.keys() == torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].keys()


def test_recomputing_twice_is_refused(tiny_bert, workdir, tmp_path):
    overrides = tiny_overrides(tiny_bert, workdir, tmp_path / "logs", "activation_checkpointing=true", "trainer=fsdp", "trainer.strategy.activation_checkpointing=true")
    result = run_script("train", *overrides)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: activation_checkpointing=true and trainer.strategy.activation_checkpointing=true would both recompute each block: keep one." in result.stderr
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not any((tmp_path / "logs" / "train" / "runs").iterdir())


def test_fsdp_config_wraps_and_checkpoints_each_block_and_refuses_a_cpu(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = trainer_config("trainer=fsdp", "trainer.strategy.activation_checkpointing=true")
    assert cfg.precision == "bf16-mixed"
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == block_classes()
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == block_classes()
    assert "auto_wrap_policy" not in instantiate(trainer_config("trainer=fsdp").strategy)._activation_checkpointing_kwargs
    # Lightning's accelerator connector: "The strategy `fsdp` requires a GPU accelerator" (trainer=model_parallel runs there).
    with pytest.raises(InstantiationException, match="strategy `fsdp` requires a GPU accelerator"):
        instantiate(cfg, accelerator="cpu", devices=1, logger=False, default_root_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_deepspeed_without_deepspeed_names_the_install(tiny_bert, workdir, tmp_path):
    result = run_script("train", *tiny_overrides(tiny_bert, workdir, tmp_path / "logs", "trainer=deepspeed"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: trainer=deepspeed needs DeepSpeed, which is not installed: pip install deepspeed" in result.stderr
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not any((tmp_path / "logs" / "train" / "runs").iterdir())


@pytest.mark.slow
def test_sharded_training_on_two_cpu_processes_resumes_from_its_checkpoint(tiny_bert, workdir, tmp_path):
    logs = tmp_path / "logs"
    common = ("trainer=model_parallel", "data.batch_size=8", "logger=none")  # 2 ranks x 8: the single process's 16
    # The first run recomputes its blocks and the resume does not: both load the same names, by parameter.
    first = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, *common, "trainer.max_epochs=1", "activation_checkpointing=true"), subprocess_=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Starting with 2 processes" in first.stdout + first.stderr
    assert "Activation checkpointing: 2 Transformer blocks" in first.stdout + first.stderr
    run = only_run(logs)
    epoch_one = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    steps = epoch_one["global_step"]
    assert steps == math.ceil(180 / 2 / 8)  # 180 training reviews split over the 2 ranks
    # Rank 0 gathered the full state, not its shard: every tensor has the shape of the unsharded model's.
    full = transformers.BertForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    assert {k: v.shape for k, v in epoch_one["state_dict"].items()} == {f"net.{k}": v.shape for k, v in full.items()}

    resumed = run_script("train", *tiny_overrides(tiny_bert, workdir, logs, *common, "ckpt_path=last"), subprocess_=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {run}/checkpoints/last.ckpt" in resumed.stdout + resumed.stderr
    epoch_two = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # Two epochs processed. Which hook wrote last.ckpt (validation end when val/acc improved, so "epoch" 1, else the
    # train epoch's end, "epoch" 2) depends on the tiny model's accuracy; the loop's progress does not.
    assert (epoch_two["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"], epoch_two["global_step"]) == (2, 2 * steps)
    # AdamW's state came back from the file: its step count continued rather than restarting at 0.
    assert {float(s["step"]) for s in epoch_two["optimizer_states"][0]["state"].values()} == {2.0 * steps}
    assert not torch.equal(epoch_two["state_dict"]["net.classifier.weight"], epoch_one["state_dict"]["net.classifier.weight"])

    metrics = metrics_of(max((logs / "train" / "runs").iterdir(), key=lambda p: p.name))
    assert all(math.isfinite(metrics[k]) for k in ("train/loss", "val/loss", "test/loss"))
    # The sharded test of the best checkpoint and a single process's eval of that file agree.
    evaluated = run_script("eval", f"ckpt_path={metrics['best_checkpoint']}", f"paths.log_dir={tmp_path / 'eval'}", "logger=none")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    printed = dict(line.split(": ") for line in evaluated.stdout.splitlines() if line.startswith("test/"))
    assert float(printed["test/loss"]) == pytest.approx(metrics["test/loss"], abs=1e-4)


def test_a_folder_of_shards_is_resumed_from_but_not_evaluated(tmp_path):
    from bertgpt.errors import UserError
    from bertgpt.pipeline import load_checkpoint
    from bertgpt.training.checkpoints import newest_checkpoint, resume_checkpoint

    runs = tmp_path / "train" / "runs"
    single = runs / "a" / "checkpoints" / "epoch_000.ckpt"
    sharded = runs / "b" / "checkpoints" / "last.ckpt"  # what save_distributed_checkpoint=true writes: a folder
    single.parent.mkdir(parents=True)
    sharded.mkdir(parents=True)
    torch.save({"global_step": 1}, single)
    torch.save({"global_step": 2}, sharded / "meta.pt")
    (sharded / "__0_0.distcp").write_bytes(b"shard")
    assert newest_checkpoint(runs) == sharded
    assert resume_checkpoint("last", runs) == resume_checkpoint(str(sharded), runs) == sharded
    with pytest.raises(UserError, match="a folder of shards"):
        load_checkpoint(str(sharded))
    (sharded / "meta.pt").unlink()  # a plain folder is no checkpoint
    assert newest_checkpoint(runs) == single
    with pytest.raises(UserError, match="no such file"):
        resume_checkpoint(str(sharded), runs)
