"""Training past one device's memory: FSDP wrapping each Transformer block, FSDP2 (`fully_shard`) on a device mesh,
DeepSpeed, and activation checkpointing of each block on any strategy.

The configs (conf/trainer/fsdp.yaml, model_parallel.yaml, deepspeed.yaml) take their strategy from here: FSDP takes
its wrap policy as a set of classes, which a YAML file cannot spell, and DeepSpeed is an optional install.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Iterable

import hydra
import torch.utils.checkpoint
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn

from bertgpt.errors import UserError
from bertgpt.training.checkpoints import plain_containers

# The Transformer block of every backbone we build, the library's and ours: FSDP shards one block at a time (its
# parameters are gathered for its forward and freed after), and activation checkpointing recomputes one block.
BLOCKS = (
    "transformers.models.bert.modeling_bert.BertLayer",
    "transformers.models.gpt2.modeling_gpt2.GPT2Block",
    "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "bertgpt.models.bert.Layer",
    "bertgpt.models.gpt.Block",
)


def block_classes(names: Iterable[str] = BLOCKS) -> set[type[nn.Module]]:
    """The classes `names` spell (dotted paths, as in the configs)."""
    classes = set()
    for name in names:
        try:
            cls = hydra.utils.get_class(str(name))
        except Exception as err:
            raise UserError(f"trainer.strategy.blocks: cannot import {name!r} ({err}). Name a module class by its dotted path.") from None
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise UserError(f"trainer.strategy.blocks: {name!r} is not a torch.nn.Module class.")
        classes.add(cls)
    return classes


def blocks_of(module: nn.Module, blocks: Iterable[str] = BLOCKS) -> list[nn.Module]:
    """The Transformer blocks inside `module`, in module order: what sharding and recomputing act on one by one."""
    classes = tuple(block_classes(blocks))
    return [m for m in module.modules() if isinstance(m, classes)]


def fsdp(blocks: Iterable[str] = BLOCKS, activation_checkpointing: bool = False, **kwargs):
    """Lightning's FSDPStrategy with one FSDP unit per Transformer block, and optionally activation checkpointing
    of each block (its activations recomputed in the backward pass: less memory, ~1/3 more compute)."""
    classes = block_classes(blocks)
    return FSDPStrategy(auto_wrap_policy=classes, activation_checkpointing_policy=classes if activation_checkpointing else None, **kwargs)


def recompute_blocks(module: nn.Module, blocks: Iterable[str] = BLOCKS) -> int:
    """Activation checkpointing of each Transformer block of `module`, on any device and strategy: a block keeps
    only its input for the backward pass, which runs its forward again (the same gradients, dropout's masks drawn
    again alike; about one more forward of compute). Returns how many blocks it changed.

    Each block's own `forward` goes through `torch.utils.checkpoint`, so names do not change: checkpoints, and
    the sharded strategies that load them by parameter name, see the plain model. torch's `checkpoint_wrapper`
    adds a module level to every name; its hooks-based `checkpoint` does not compose with torch.compile."""
    found = blocks_of(module, blocks)
    if not found:
        names = ", ".join(sorted(c.__name__ for c in block_classes(blocks)))
        raise UserError(f"activation_checkpointing=true: {type(module).__name__} has none of the Transformer blocks it recomputes ({names}).")
    for block in found:
        block.forward = types.MethodType(recomputed_forward, block)  # bound to the block, so a deepcopy rebinds it
    return len(found)


def recomputed_forward(block: nn.Module, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2): the module shards itself in `configure_model` (`shard_blocks`).

    `data_parallel_size="auto"` is every rank of every node divided by `tensor_parallel_size` (pure FSDP with the
    default 1); Lightning's own "auto" would be the number of nodes, leaving one rank per node to shard over.
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int = 1, **kwargs):
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes // self._tensor_parallel_size
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        # A folder of shards is written without the CheckpointIO (AtomicCheckpointIO): its meta.pt must still hold
        # plain containers only, or loading it with weights_only=True (the test after fit) fails.
        super().save_checkpoint(plain_containers(checkpoint), filepath, storage_options)


def deepspeed(stage: int = 2, **kwargs):
    """Lightning's DeepSpeedStrategy at ZeRO `stage`; DeepSpeed is not a dependency of this project."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("trainer=deepspeed needs DeepSpeed, which is not installed: pip install deepspeed (it builds against CUDA), or use trainer=fsdp.")
    return DeepSpeedStrategy(stage=stage, **kwargs)


def shard_blocks(module: nn.Module, mesh, blocks: Iterable[str] = BLOCKS) -> nn.Module:
    """FSDP2 on `mesh`: each Transformer block of `module` becomes its own sharded unit, then the root takes the
    rest (embeddings, head). Idempotent: Lightning calls `configure_model` again for the test after a fit."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module, FSDPModule):
        return module
    for block in blocks_of(module, blocks):
        fully_shard(block, mesh=mesh)
    return fully_shard(module, mesh=mesh)
