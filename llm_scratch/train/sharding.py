"""Sharded data-parallel training (``trainer=fsdp``): Lightning's ``ModelParallelStrategy`` with
PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Every process holds 1/N of the parameters, gradients and AdamW moments (N = all devices of all
nodes) and sees its own share of each batch, as under DDP. Each decoder block is its own FSDP
unit: its weights are gathered just before it runs and freed after it (forward and backward),
so only one block is whole at a time; the embeddings, the final norm and the LM head (tied to
the token embedding or not) form the root unit.

Checkpoints are one consolidated file (``save_distributed_checkpoint=False``): the full state
dict and optimizer state gathered on rank 0, the same format as any other run's, so
``sample.py``, ``GPT.save_hf`` (GPT-2 export) and the checkpoint checks read it unchanged, and a
run continues from it (``ckpt_path=``) on any number of devices.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.utils.checkpoint import checkpoint

from llm_scratch.compat import shard_data_parallel_over_all_devices
from llm_scratch.errors import UserError

# Lightning's spellings of the precisions FSDP2 trains in here (ModelParallelStrategy refuses
# 16-mixed: fp16 needs a gradient scaler that it does not have).
_PRECISIONS = {"32-true": "32-true", "32": "32-true", "bf16-mixed": "bf16-mixed"}
_PRECISIONS |= {"bf16": "bf16-mixed", "bf16-true": "bf16-true", "16-true": "16-true"}


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as data-parallel FSDP2 over all devices (no tensor parallelism),
    with the per-block options :meth:`GPTLightningModule.configure_model` applies.

    Args:
        activation_checkpointing: recompute each decoder block's activations in the backward
            pass instead of keeping them (about a third more compute, and activation memory of
            one block instead of all: for long contexts on big models). The losses do not change.
        reshard_after_forward: free each block's gathered weights after its forward (ZeRO-3,
            the least memory); False keeps them until its backward (one all-gather fewer per
            block and step, the memory of a whole unsharded model).
        process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPUs unless given.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=False, process_group_backend=process_group_backend
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        shard_data_parallel_over_all_devices(self)
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        """Continue from a consolidated checkpoint file: of a sharded run, or of one trained in
        one process or under DDP. Each process reads the file memory-mapped and keeps its shard.

        Lightning 2.6 reads such a file too, but keys the optimizer state by the order of
        ``model.parameters()``, while ours lists it group by group (decay, then no decay) as
        ``torch.optim`` saves it: a checkpoint of an unsharded run then put the moments of one
        parameter into another (a size mismatch). Here the state is matched group by group, as
        ``Optimizer.load_state_dict`` matches it.
        """
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_file():  # a distributed checkpoint directory: Lightning's own reader
            return super().load_checkpoint(path, weights_only=weights_only)
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        module = self.lightning_module
        weights = checkpoint.pop("state_dict")
        if module.strict_loading:
            missing = [n for n, _ in module.named_parameters() if n not in weights]
            if missing:
                raise KeyError(f"The checkpoint {path} has no {', '.join(missing[:5])}")
        # not strict: a checkpoint without the metrics' running sums loads as under DDP
        full = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, weights, options=full)
        names = {id(p): n for n, p in module.named_parameters()}
        saved = checkpoint.get("optimizer_states", [])
        for optimizer, state in zip(self.optimizers, saved, strict=False):
            by_name = optimizer_state_by_name(state, optimizer.param_groups, names)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=by_name, options=full)
        return checkpoint


def optimizer_state_by_name(
    state: dict[str, Any], param_groups: list[dict[str, Any]], names: dict[int, str]
) -> dict[str, Any]:
    """A full optimizer state dict keyed by parameter ids (``torch.optim``'s own, or Lightning's
    consolidated one) keyed by parameter name instead: the i-th id of a saved group is the i-th
    parameter of the optimizer's group (``param_groups``; ``names`` by ``id(parameter)``)."""
    groups = state["param_groups"]
    if not any(isinstance(i, int) for g in groups for i in g["params"]):
        return state  # already by name
    mapping: dict[int, str] = {}
    for saved, group in zip(groups, param_groups, strict=True):
        for i, param in zip(saved["params"], group["params"], strict=True):
            mapping[i] = names[id(param)]
    return {
        "state": {mapping[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [mapping[i] for i in g["params"]]} for g in groups],
    }


def uses_fsdp(trainer_cfg: Any) -> bool:
    """Whether a trainer config (``cfg.trainer``) trains with :class:`FSDP2Strategy`."""
    strategy = trainer_cfg.get("strategy")
    target = strategy.get("_target_") if hasattr(strategy, "get") else None
    return target == f"{__name__}.{FSDP2Strategy.__name__}"


def check_fsdp_config(cfg: Any) -> None:
    """Refuse, with one line, what ``trainer=fsdp`` cannot train with (a :class:`UserError`)."""
    if not uses_fsdp(cfg.trainer):
        return
    precision = str(cfg.trainer.get("precision"))
    if precision not in _PRECISIONS:
        raise UserError(
            f"trainer=fsdp does not combine with trainer.precision={precision}: FSDP2 trains in "
            "bf16-mixed (bfloat16 compute, float32 weights and gradient reduction; GPUs from "
            "Ampere on, and CPUs) or 32-true. Use trainer.precision=bf16-mixed or 32-true."
        )


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of our GPT (``transformer.h``) or of the HF backend
    (``hf.transformer.h``), in order."""
    for owner in (model, getattr(model, "hf", None)):
        blocks = getattr(getattr(owner, "transformer", None), "h", None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise TypeError(f"{type(model).__name__} has no transformer.h blocks to shard")


def checkpoint_activations(block: nn.Module) -> None:
    """Recompute ``block``'s forward in the backward pass (``torch.utils.checkpoint``, RNG state
    kept, so dropout draws the same masks). The forward is wrapped in place, so parameter names
    and checkpoints stay as they are (``checkpoint_wrapper`` would add a prefix to every name).
    Only training forwards are recomputed: evaluation and KV-cache generation run plainly."""
    forward = block.forward

    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    block.forward = checkpointed
    block._llm_scratch_checkpointed = True


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (its root is an FSDP module)."""
    return isinstance(model, FSDPModule)


def shard_model(
    model: nn.Module,
    mesh: Any,
    *,
    bf16: bool = False,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> None:
    """Shard ``model`` in place over the 1-D device ``mesh``: ``fully_shard`` each decoder block,
    then the whole model (the root unit takes what no block holds). Idempotent.

    ``bf16``: FSDP2's mixed precision, weights gathered and used in bfloat16, gradients reduced
    in float32 into the float32 shards the optimizer updates.
    """
    if is_sharded(model):  # Lightning calls configure_model again (validate after fit)
        return
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    for block in decoder_blocks(model):
        if activation_checkpointing:
            checkpoint_activations(block)
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # generate() uses the root's weights (embeddings, LM head) outside forward(): registering it
    # gathers them for the call, as forward() does. Every process must run it (sample callback).
    register_fsdp_forward_method(model, "generate")


def configure_sharding(model: nn.Module, trainer: Any, mesh: Any) -> None:
    """Shard ``model`` as ``trainer``'s :class:`FSDP2Strategy` says (for the module's
    ``configure_model``); ``mesh`` is the strategy's device mesh."""
    strategy = trainer.strategy
    shard_model(
        model,
        mesh["data_parallel"],
        bf16=str(trainer.precision) == "bf16-mixed",
        activation_checkpointing=getattr(strategy, "activation_checkpointing", False),
        reshard_after_forward=getattr(strategy, "reshard_after_forward", True),
    )
