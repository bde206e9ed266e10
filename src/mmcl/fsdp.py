"""FSDP for the scenario setting's language model (`vlm.fsdp`): PyTorch's FSDP2 `fully_shard`, nothing home-made.

Under torchrun every decoder layer of the language model is a `fully_shard` unit and the language model
is the root unit around them: each rank keeps 1/N of those weights (frozen base and LoRA alike) and
all-gathers one layer's weights only while computing it. The rest of the VLM (vision tower, projector,
LM head) stays replicated and its gradients are averaged by `distributed.average_gradients`; the sharded
parameters' gradients are reduce-scattered (averaged) by FSDP itself.

What changes for the code around a sharded model, all of it here:
- state dicts go through `torch.distributed.checkpoint.state_dict`: `get_model_state_dict` /
  `get_optimizer_state_dict` gather full (unsharded) tensors, `set_*` scatter them back, so a checkpoint
  holds the same full CPU tensors whatever the number of ranks, and resumes on any number (one included:
  with `vlm.fsdp` on and one process the model is not sharded, but checkpoints keep this format);
- a sharded model cannot be deep-copied (FSDP refuses), so a method's teacher is a second model built
  the same way, sharded, holding the previous state (`Setting.copy_model`);
- every forward of a sharded module is a collective: the ranks make the same calls (the evaluator pads
  a rank's share of the questions with dummy batches, generation runs with `synced_gpus`).
"""
from __future__ import annotations

import torch
from torch import nn

from mmcl import distributed as dist


def sharded(module: nn.Module) -> bool:
    """True if `module` (or any submodule) is sharded by `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_language_model(lm: nn.Module, layers: nn.ModuleList, shared: set[nn.Parameter] = frozenset()) -> None:
    """`fully_shard` every decoder layer of `lm` (a unit each: one layer's weights gathered at a time), then
    `lm` itself (its embeddings and final norm), over every rank. `shared`: parameters of `lm` that modules
    outside it use too (input embeddings tied to the LM head): left replicated, since sharding replaces a
    parameter and would untie it."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(lm, ignored_params=set(shared) or None)
    _keep_output_recording([lm, *layers])


def _keep_output_recording(modules) -> None:
    """transformers (5.x) looks up what a model can record (attention maps, hidden states: `output_attentions`)
    by the name of its class, registered when the model is built; `fully_shard` swaps a module's class for a
    subclass (`FSDPLlamaModel`), so the entry is registered again under the new name, as the model's own
    constructor does (without it `quad` gets no attention maps from a sharded model)."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # a transformers without the registry records by other means
        return
    for m in modules:
        can = getattr(m, "_can_record_outputs", None)
        if can is not None:
            _CAN_RECORD_REGISTRY[m] = can


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def trainable_state(model: nn.Module, names: set[str], checkpoint: bool) -> dict[str, torch.Tensor]:
    """The full (unsharded) tensors of `model`'s parameters `names`. `checkpoint`: gathered into rank 0's CPU
    memory only (the other ranks get an empty dict: rank 0 writes the checkpoint); otherwise every rank gets
    them on the model's device (a method's snapshot of the previous model, kept on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=checkpoint, ignore_frozen_params=True))
    return {k: v.detach().clone() for k, v in state.items() if k in names}


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load full tensors (the same on every rank) into `model`, sharded or not; (missing, unexpected) keys."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    # torch.distributed.checkpoint does not report missing keys: the model's own names (no gathering) say them
    missing = [k for k in model.state_dict() if k not in state]
    # a copy: set_model_state_dict fills the dict it is given with the model's other entries
    out = set_model_state_dict(model, dict(state), options=_options(strict=False))
    return missing, list(out.unexpected_keys)


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """`opt`'s state with full tensors keyed by parameter name, in rank 0's CPU memory (empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load `optimizer_state`'s full tensors (the same on every rank) into `opt`, sharded as its parameters are.
    Parameters that had no state when it was saved (trainable but not used yet, e.g. a tower's last norm whose
    output the model never reads) get none now either, as in the run that was interrupted."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=_options(strict=False))
    saved = set(state.get("state", {}))
    for name, p in model.named_parameters():
        if name not in saved:
            opt.state.pop(p, None)  # set_optimizer_state_dict first gives every parameter a zero state


def lockstep_batches(n: int, batch_size: int) -> int:
    """How many batches of `batch_size` every rank runs over its share of `n` items taken every world-th (the
    largest share's count): with a sharded model, a rank with fewer runs dummy batches to match."""
    most = -(-n // dist.world())
    return -(-most // batch_size)


__all__ = ["sharded", "shard_language_model", "trainable_state", "load_state", "optimizer_state",
           "load_optimizer_state", "lockstep_batches"]
