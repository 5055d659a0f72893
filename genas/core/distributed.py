"""Small DistributedDataParallel helpers: one code path for ``torchrun`` multi-GPU runs and plain CPU runs.

A process group is created only when ``torchrun`` sets ``WORLD_SIZE > 1``; otherwise every helper answers as
the single, main process, so training code never branches on whether it runs distributed.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from genas.core.errors import UsageError

__all__ = ["DeviceError", "DistInfo", "derived_seed", "resolve_device", "init_distributed", "cleanup_distributed",
           "get_rank", "get_world_size", "is_main", "barrier", "all_reduce_sum", "seed_everything", "get_rng_states",
           "set_rng_states", "AMP_DTYPES", "amp_dtype", "shard", "shard_owner", "all_gather_objects", "broadcast_object"]


T = TypeVar("T")

#: ``amp`` setting -> autocast dtype (``None``: full precision); every stage's ``amp`` option reads this table.
AMP_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str | None, setting: str = "amp") -> torch.dtype | None:
    """The autocast dtype of ``name`` (``None``, ``"bf16"`` or ``"fp16"``); ``ValueError`` naming ``setting``."""
    if name not in AMP_DTYPES:
        raise ValueError(f"{setting} must be null (fp32), 'bf16' or 'fp16', got {name!r}")
    return AMP_DTYPES[name]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceError(UsageError, RuntimeError):
    """A device that this machine does not have (a RuntimeError too, as torch's own device errors are)."""


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU if there is one, else CPU; ``cuda`` -> this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:  # torch: "Expected one of cpu, cuda, ... device type at start of device string"
        raise DeviceError(f"device {name!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available; use device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (NCCL on GPU, Gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=torch_device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (the process that writes checkpoints, logs and progress bars)."""
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from position ``rank`` (round robin).

    A fixed assignment from the list alone (no timing, no work stealing), balanced by count (shares differ by
    at most one item), and interleaved so that a list ordered by cost (e.g. an enumeration of a search space)
    spreads its expensive items over all ranks. ``rank``/``world_size`` default to this process's."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(items[rank::world_size])


def shard_owner(index: int, world_size: int) -> tuple[int, int]:
    """``(rank, position in that rank's share)`` of ``items[index]`` under :func:`shard`."""
    return index % world_size, index // world_size


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``torch.distributed.all_gather_object``: any
    picklable object); ``[obj]`` in a single process. A collective: every rank must call it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (other ranks' argument is ignored); ``obj`` in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, per_rank: bool = False) -> int:
    """Seed Python, NumPy and torch; with ``per_rank`` each rank gets ``seed + rank`` (e.g. for dropout).
    Returns the seed used."""
    seed = seed + get_rank() if per_rank else seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def get_rng_states(device: torch.device) -> dict[str, Any]:
    """This process's torch generator states (CPU, and CUDA on a GPU run), for resumable checkpoints."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`get_rng_states` saved."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def derived_seed(*values: int) -> int:
    """A 64-bit seed derived from integers (run seed, iteration, rank ...): different tuples give unrelated seeds,
    so a step's draws depend on what it is, not on how many draws the process made before it (exact resumes)."""
    return int(np.random.SeedSequence([v % 2 ** 64 for v in values]).generate_state(1, np.uint64)[0])
