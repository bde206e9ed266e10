"""torch.distributed glue: the same code runs single-process and under `torchrun`.

Every rank sees the same global batch order (seeded), keeps only its slice of each batch,
and DDP averages the gradients, so N ranks compute what one process would. Anything a
method keeps (replay buffers, statistics) is computed identically on every rank from
seeded generators; `check_replicated` verifies that after every experience.
"""
from __future__ import annotations

import hashlib
import io
import os

import torch
import torch.distributed as dist


def init() -> bool:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU; `MMCL_DIST_BACKEND`
    chooses another, e.g. gloo for two ranks sharing one GPU, which NCCL refuses)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = os.environ.get("MMCL_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(x):
    """This rank's contiguous slice of a global batch (a tensor, a list, or a dict of them)."""
    if not active():
        return x
    if isinstance(x, dict):
        return {k: shard(v) for k, v in x.items()}
    if isinstance(x, list):  # e.g. a scenario batch's questions: the same slice as its tensors'
        return [x[i] for i in torch.tensor_split(torch.arange(len(x)), world())[rank()].tolist()]
    return torch.tensor_split(x, world())[rank()]


def _comm_device() -> torch.device:
    """Where tensors sent through collectives live: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_flag(flag: bool) -> bool:
    """True on every rank if it is True on any rank (used to stop all ranks at the same step)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(rows: dict) -> dict:
    """Every rank's `rows` (a dict of tensors sharing their first dimension), concatenated in rank order:
    the global batch again, identical on every rank."""
    if not active():
        return rows
    out: list = [None] * world()
    dist.all_gather_object(out, {k: v.detach().cpu() for k, v in rows.items()})
    return {k: torch.cat([o[k] for o in out]) for k in rows}


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params) -> None:
    """Average the gradients of `params` over the ranks, in one flat all-reduce (a parameter without a
    gradient on a rank counts as zero there). What DDP does after backward, for settings whose methods call
    the model more than once per step (teachers, replay, distillation), which DDP's contract of one forward
    through its wrapper per backward does not allow; the trainable parameters (LoRA, projector,
    branches) are few, so one bucket is what DDP's own bucketing would send."""
    if not active():
        return
    from torch.distributed.tensor import DTensor

    # parameters sharded by FSDP (`vlm.fsdp`) had their gradients reduce-scattered (averaged) by FSDP itself
    params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def broadcast_object(obj):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def state_digest(state) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def check_replicated(state) -> list[str]:
    """Digest of `state` on every rank; raises if the ranks disagree. A single process has nothing to compare:
    no digest (`[]`), and no pass over the state, which grows with a replay memory's classes."""
    if not active():
        return []
    d = state_digest(state)
    out: list = [None] * world()
    dist.all_gather_object(out, d)
    if len(set(out)) != 1:
        raise RuntimeError(f"method state differs across ranks: {out}")
    return out


def cleanup(together: bool = False) -> None:
    """Leave the process group. `together` (every rank got here the same way: the run ended or was
    stopped): first wait for each other, since a rank that tears its gloo threads down while a peer
    is still talking to it can abort at exit ("terminate called without an active exception")."""
    if dist.is_initialized():
        if together and dist.get_world_size() > 1:
            try:
                dist.barrier()
            except RuntimeError:  # a peer is already gone: just leave
                pass
        dist.destroy_process_group()
