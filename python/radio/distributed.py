"""``radio.quantize`` over several processes with ``torch.distributed`` (issue 7, items 2-3).

When the user (or ``torchrun``) has called ``torch.distributed.init_process_group``, the round
loop splits every round's calibration sequences across the ranks (micro-batch ``m`` of the round
to rank ``m % world``: the micro-batches are those of the single-process run, since one random-
sign backward pass squares the gradient sum of its micro-batch), sums the per-group statistics
of all ranks with ``all_reduce`` in float64, solves the bit allocation once on rank 0 and
broadcasts it, quantizes on every rank (a deterministic function of the identical statistics and
depths) and finally broadcasts rank 0's packed layers, so that every rank ends with exactly rank
0's model. The random signs of each sequence are those of the single-process run (drawn for the
whole round from the shared seed), so 1, 2 or 4 processes give the same bit allocation and the
same outputs within float rounding of the sums.

Every function here is a no-op (or the identity) without an initialised process group, so the
single-process path does not change.

Use (``torchrun --nproc_per_node 4 job.py``; gloo on CPUs, NCCL on GPUs)::

    torch.distributed.init_process_group("gloo")
    model = radio.quantize(model, bits=4, calib=tokens, config=radio.QuantConfig.cpu(
        micro_batch=1))          # same micro_batch at every scale: same answer
    if torch.distributed.get_rank() == 0:
        radio.save(model, "out/model-4bpw")   # saved once

For the same answer at every scale, the micro-batches must be the same: set
``QuantConfig.micro_batch`` (otherwise it follows each device's memory). The calibration data
(incl. self-generated sequences) is prepared on every rank alike. Without offload each rank holds
the whole model; with ``offload=`` (``radio.offload``) FSDP shards the weights' rows across the
ranks, every rank runs as many passes (``lockstep_indices``: FSDP's all-gathers are collectives)
and whole originals are gathered one layer at a time (``gather_rows``).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch

__all__ = ["is_distributed", "rank", "world_size", "is_main", "barrier", "comm_device",
           "all_reduce_sum", "all_reduce_states", "broadcast_object", "broadcast_tensors",
           "my_indices", "my_indices_of", "lockstep_indices", "gather_rows"]


def _dist():
    return torch.distributed


def is_distributed() -> bool:
    """True when a process group is initialised with more than one rank."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints, saves and solves."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def comm_device(fallback: torch.device) -> torch.device:
    """Where collective buffers must live: CUDA for NCCL, the CPU for gloo."""
    if is_distributed() and _dist().get_backend() == "nccl":
        return fallback if fallback.type == "cuda" else torch.device("cuda",
                                                                     torch.cuda.current_device())
    return torch.device("cpu")


def my_indices(count: int) -> List[int]:
    """The positions ``0..count-1`` this rank handles: ``i % world == rank``."""
    return my_indices_of(rank(), count)


def my_indices_of(which: int, count: int) -> List[int]:
    """The positions ``0..count-1`` rank ``which`` handles."""
    return list(range(which, count, world_size()))


def lockstep_indices(count: int) -> List[int]:
    """``my_indices(count)`` padded with ``-1`` (a pass whose results are not used) to the
    length of rank 0's: every rank then runs the same number of passes, as FSDP's sharded
    weights need (their all-gathers are collectives)."""
    mine = my_indices(count)
    steps = -(-count // world_size())
    return mine + [-1] * (steps - len(mine))


def gather_rows(local: torch.Tensor, rows: int,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """The whole tensor of ``rows`` rows from every rank's block of rows, FSDP's dim-0
    sharding: rank ``r`` holds rows ``[r c, min((r + 1) c, rows))``, ``c = ceil(rows /
    world)`` (the last ranks may hold fewer or none). A collective: every rank calls it, in
    the same order. Returned on ``device`` (default: ``local``'s; collectives run on
    ``comm_device``); without a process group, ``local`` itself (which must be whole)."""
    device = local.device if device is None else torch.device(device)
    if not is_distributed():
        if local.shape[0] != rows:
            raise ValueError(f"gather_rows: one process holds {local.shape[0]} of {rows} rows; "
                             "expected all of them")
        return local.to(device)
    world, per = world_size(), -(-rows // world_size())
    expected = max(0, min(per, rows - rank() * per))
    if local.shape[0] != expected:
        raise ValueError(f"gather_rows: rank {rank()} holds {local.shape[0]} rows of {rows}; "
                         f"expected {expected} (rows split in blocks of {per} over {world} ranks)")
    comm = comm_device(device)
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=comm)
    padded[:expected].copy_(local)
    out = torch.empty((world * per, *local.shape[1:]), dtype=local.dtype, device=comm)
    _dist().all_gather(list(out.chunk(world)), padded)
    return out[:rows].to(device)


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum the tensors over all ranks, in place, in float64 (one flat buffer: one collective).
    Float32 sums are exact to float32 rounding whatever the order of the ranks."""
    if not is_distributed() or not tensors:
        return
    device = comm_device(tensors[0].device)
    flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors])
    _dist().all_reduce(flat, op=_dist().ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view(t.shape))
        offset += n


def clear_local_statistics(states: Iterable) -> None:
    """On every rank but 0, zero the statistics the round loop adds to (rank 0 keeps the
    totals of the earlier rounds): after the round, their sum over ranks is the new total."""
    if rank() == 0:
        return
    for state in states:
        state.g2_sum.zero_()
        state.row_g2_sum.zero_()
        state.x_sum.zero_()
        state.x_count = 0
        state.passes = 0


def all_reduce_states(states: Sequence) -> None:
    """Sum the statistics of one round over the ranks (after ``clear_local_statistics``)."""
    if not is_distributed():
        return
    counts = torch.tensor([[s.x_count, s.passes] for s in states], dtype=torch.float64)
    all_reduce_sum([counts] + [t for s in states for t in (s.g2_sum, s.row_g2_sum, s.x_sum)])
    for s, (x_count, passes) in zip(states, counts.tolist()):
        s.x_count, s.passes = int(x_count), int(passes)


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled: small objects, e.g. the allocation)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite the tensors of every rank with those of rank ``src``, in place (same shapes
    and dtypes on every rank)."""
    if not is_distributed():
        return
    dist = _dist()
    for t in tensors:
        device = comm_device(t.device)
        buf = t if t.device == device and t.is_contiguous() else t.to(device).contiguous()
        dist.broadcast(buf, src=src)
        if buf is not t:
            t.copy_(buf)
