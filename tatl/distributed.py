"""Training on several processes: `torchrun --nproc_per_node=N -m tatl run ...` (one machine or many).

torchrun starts N copies of `tatl run` and tells each its RANK, LOCAL_RANK and WORLD_SIZE. Every rank runs the same
pipeline on the same data and split; what changes under torchrun:

- each global batch of `train.batch_size` images is cut into WORLD_SIZE equal slices, one per rank, and
  DistributedDataParallel averages the gradients, so one step sees the same images as a single process would;
- validation images are dealt out to the ranks and the official-metric sums and losses are added up across them;
- rank 0 alone writes the run folder (checkpoints, logs, JSON, the report); the others wait for it where they read
  what it wrote, and every error is raised on every rank, so no rank is left waiting on a dead one.

On CUDA, BatchNorm becomes SyncBatchNorm (train.sync_batchnorm): statistics of the global batch. A CPU has none, so
there each rank normalises its own slice and N processes match one process with the same global batch to a
tolerance, not bit for bit. Outside torchrun (WORLD_SIZE unset or 1) every function here
is a no-op and `tatl run` is a plain single process.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from tatl.errors import ConfigError, TatlError

T = TypeVar("T")
S = TypeVar("S")
TIMEOUT = timedelta(minutes=60)  # a rank may wait this long for rank 0 (e.g. while it generates or checks the data)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> None:
    """Join the process group torchrun describes: NCCL when the run trains on CUDA, else gloo (CPU)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)


def teardown() -> None:
    """Leave the process group on success, every rank together. DistributedDataParallel wrappers sit in reference
    cycles that hold the group and its gloo work; freed during interpreter shutdown instead of here, they can abort
    the process (seen in 2 of about 20 runs of a test: "terminate called without an active exception")."""
    if not dist.is_initialized():
        return
    gc.collect()
    if is_distributed():
        dist.barrier()  # no rank destroys the group while another still has a collective in flight
    dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all ranks (float64 on the CPU, so gloo and NCCL both take it)."""
    if not is_distributed():
        return values
    reduced = values.detach().to(device=_collective_device(), dtype=torch.float64).clone()
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one (a diverged loss must stop every rank at once)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0) if is_distributed() else flag


def main_process_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the other ranks (which then read what rank 0 wrote, e.g. the data and split).

    An error on rank 0 is raised on every rank with rank 0's message, so the others stop instead of waiting."""
    if not is_distributed():
        return work()
    error: Exception | None = None
    result = None
    if is_main_process():
        try:
            result = work()
        except Exception as caught:  # any failure: the other ranks must hear of it, not wait for a message
            error = caught
    message = broadcast_from_main(f"{type(error).__name__}: {error}" if error else None)
    if error is not None:
        raise error
    if message is not None:
        raise TatlError(f"rank 0 stopped: {message}")
    if not is_main_process():
        try:
            result = work()
        except Exception as caught:  # e.g. a node that does not see the data: rank 0 must not wait for it
            error = caught
    if any_rank(error is not None):
        if error is not None:
            raise error
        raise TatlError("another torchrun process stopped while it read the run folder and data (its message is "
                        "above); every process must see the same files")
    return result


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (a picklable object), e.g. Stage-1 boxes, so every rank crops alike."""
    if not is_distributed():
        return value
    holder = [value if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0, device=_collective_device())
    return holder[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's last training step moved its own,
    and the network validated and saved must be one network."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        moved = buffer.to(_collective_device())
        dist.broadcast(moved, src=0)
        buffer.copy_(moved)


def check_batch_size(batch_size: int) -> None:
    """train.batch_size is the global batch: each of the torchrun processes takes an equal slice of it."""
    if batch_size % world_size():
        raise ConfigError(f"train.batch_size={batch_size} must be a multiple of the {world_size()} torchrun "
                          f"processes (each takes an equal slice of every batch), e.g. --set train.batch_size="
                          f"{world_size() * max(1, batch_size // world_size())}")


def rank_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """This rank's share of each global batch of `order`: slice `rank` of `world_size` equal slices.

    Every rank gets the same number of batches of the same size (DDP needs that). With one process this is just
    `order` cut into batches; with N, the epoch's order is first cut to a multiple of N (at most N-1 images of the
    epoch are left out, different ones each epoch since the order is reshuffled)."""
    check_batch_size(batch_size)
    world, me = world_size(), rank()
    order = order[: len(order) - len(order) % world]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == world < batch_size:
        batches.pop()  # a last share of one image breaks BatchNorm in training mode
    share = [len(batch) // world for batch in batches]
    return [batch[me * n : (me + 1) * n] for batch, n in zip(batches, share, strict=True)]


def my_share(items: T) -> T:
    """The items of a list or array this rank evaluates: every world_size-th, from its rank (all of them outside
    torchrun). A view of an array (or of a memory-mapped cache), never a copy."""
    return items[rank() :: world_size()]


def gather_from_ranks(local: T) -> list[T]:
    """Every rank's `local` (a picklable object), in rank order, on every rank; [local] outside torchrun."""
    if not is_distributed():
        return [local]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def per_image_means(sums: dict[str, float], seen: int) -> dict[str, float]:
    """Each sum divided by the images seen, over every rank's images (as one process would count them)."""
    if is_distributed():
        reduced = all_reduce_sum(torch.tensor([*sums.values(), seen], dtype=torch.float64)).tolist()
        sums, seen = dict(zip(sums, reduced[:-1], strict=True)), reduced[-1]
    return {name: total / max(seen, 1) for name, total in sums.items()}


def sum_scorer_over_ranks(scorer: S) -> S:
    """`scorer` (tatl.metrics.isic2018 Task1Scorer or Task2Scorer) holding the totals of every rank's images, in
    place."""
    if is_distributed():
        scorer.set_totals(all_reduce_sum(torch.from_numpy(scorer.totals())).numpy())
    return scorer


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
