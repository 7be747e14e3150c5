"""Data parallelism: one job on N processes (``accelerate launch`` / ``torchrun``), one shard of
each step's prompts per rank, statistics and gradients summed across ranks, writes on rank 0.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every function here is the identity
or its single-process equivalent, so a one-process job computes exactly what it did before.

How a global batch is split and why the sums equal the one-process numbers: every rank draws the
same global prompt list (the prompt stream is seeded alike) and keeps its contiguous shard
(:func:`shard`). A loss that is a mean over tokens (or sequences, or prompts) of the global batch
is ``sum over ranks of local_sum / global_count``; each rank scales its local mean by its share
of the global normaliser (:func:`share`) and the gradients are summed (:func:`sum_gradients`),
so the summed gradient is the full batch's. The same holds for whitening (:func:`masked_whiten`)
and for the metrics (:func:`weighted_sum`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from alignbench import ops
from alignbench.errors import ConfigError

T = TypeVar("T")


def setup() -> None:
    """Join the process group that ``accelerate launch`` or ``torchrun`` describes in the
    environment (``WORLD_SIZE`` > 1), through accelerate's ``PartialState``: gloo on the CPU,
    NCCL on GPUs (each rank on its ``LOCAL_RANK`` device). Nothing with one process."""
    if os.environ.get(SLURM_ENV) == "1":
        _from_slurm()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    wait_timeout_s()  # a bad ALIGNBENCH_WAIT_TIMEOUT_S: one line, before any rank connects
    if not dist.is_initialized():
        from accelerate import PartialState

        # cpu=True unless this rank has a GPU of its own: gloo then, whatever torch sees.
        PartialState(cpu=not torch.cuda.is_available())
    _waiting_group()  # made now, every rank at once (see its docstring)


#: Set to 1 (conf/hydra/launcher/slurm_ddp.yaml does) to make the tasks of one SLURM job the
#: ranks of one job: torch's variables are then read from SLURM's.
SLURM_ENV = "ALIGNBENCH_DDP_FROM_SLURM"


def _from_slurm() -> None:
    """``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``PORT`` from the SLURM task's
    variables (the first host of the allocation is the master), where the launcher set none."""
    if "WORLD_SIZE" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    import subprocess

    nodes = os.environ["SLURM_JOB_NODELIST"]
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
    ).stdout.split()
    os.environ.update(
        WORLD_SIZE=os.environ["SLURM_NTASKS"],
        RANK=os.environ["SLURM_PROCID"],
        LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        MASTER_ADDR=hosts[0] if hosts else nodes,
        # One port per SLURM job, so two jobs on one node do not collide.
        MASTER_PORT=os.environ.get(
            "MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)
        ),
    )


def world_size() -> int:
    """How many processes train this job (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0: the one process that writes the job folder, checkpoints and W&B."""
    return rank() == 0


def shard(items: list[T]) -> list[T]:
    """This rank's contiguous share of a global list (all of it with one process): rank ``r`` of
    ``W`` takes the ``r``-th of ``W`` slices whose lengths differ by at most one, so the shards
    in rank order are the list (a step's prompts split evenly: checked at start-up)."""
    size = world_size()
    if size == 1:
        return items
    base, extra = divmod(len(items), size)
    start = rank() * base + min(rank(), extra)
    return items[start : start + base + (1 if rank() < extra else 0)]


def minibatches(n: int, count: int, generator: torch.Generator) -> list[tuple[torch.Tensor, bool]]:
    """One epoch's mini-batches of the global batch, each as ``(rows, present)``: the indices of
    this rank's ``n`` rows in it. One process: ``randperm(n)`` cut into ``ceil(n / count)``-row
    slices (every ``present``). Several: rank 0's ``generator`` shuffles every rank's rows (in rank
    order: the global batch) exactly so, and each rank keeps its rows of each slice, so the
    mini-batches are one process's. A rank with no row in a slice gets one stand-in row and
    ``present=False``: it runs the step (every collective) with that row counting for nothing."""
    if world_size() == 1:
        order = torch.randperm(n, generator=generator)
        size = max(1, -(-n // count))
        return [(order[start : start + size], True) for start in range(0, n, size)]
    counts = [int(c) for c in gather(n)]
    overall, offset = sum(counts), sum(counts[: rank()])
    order = broadcast(torch.randperm(overall, generator=generator) if is_main_process() else None)
    size = max(1, -(-overall // count))
    out = []
    for start in range(0, overall, size):
        rows = order[start : start + size]
        mine = rows[(rows >= offset) & (rows < offset + n)] - offset
        out.append((mine, True) if len(mine) else (torch.zeros(1, dtype=torch.long), False))
    return out


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: the rank's GPU under NCCL (which rejects CPU
    tensors), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: torch.Tensor, op: Any = None) -> torch.Tensor:
    """The element-wise sum (or ``op``) over ranks of a float64 copy of ``values``, on the CPU."""
    out = values.detach().to(_collective_device(), torch.float64).clone()
    dist.all_reduce(out, op=op or dist.ReduceOp.SUM)
    return out.cpu()


def total(value: float) -> float:
    """The sum of ``value`` over ranks (itself with one process)."""
    if world_size() == 1:
        return value
    return float(_all_reduce(torch.tensor([float(value)]))[0])


def maximum(value: float) -> float:
    """The largest ``value`` over ranks (itself with one process): e.g. a step's seconds."""
    if world_size() == 1:
        return value
    return float(_all_reduce(torch.tensor([float(value)]), dist.ReduceOp.MAX)[0])


def share(count: torch.Tensor | float) -> float:
    """This rank's part of a global normaliser: ``local count / sum over ranks of counts`` (1.0
    with one process). Multiply a local mean by it and sum over ranks to get the global mean."""
    if world_size() == 1:
        return 1.0
    local = float(count)
    overall = total(local)
    return local / overall if overall > 0 else 0.0


def weighted_sum(values: dict[str, float], weight: float) -> dict[str, float]:
    """``sum over ranks of weight * value`` for each metric, in one all-reduce (the values
    themselves with one process): local means weighted by :func:`share` give global means."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    summed = _all_reduce(torch.tensor([weight * float(values[k]) for k in keys]))
    return {k: float(v) for k, v in zip(keys, summed.tolist(), strict=True)}


def sum_values(values: dict[str, float]) -> dict[str, float]:
    """The sum over ranks of each value (the values with one process); every rank must pass the
    same keys (e.g. per-model FLOPs)."""
    return weighted_sum(values, 1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """:func:`alignbench.ops.masked_whiten` with the mean and unbiased variance of the masked
    positions of every rank's ``x`` (exactly ``ops.masked_whiten`` with one process)."""
    if world_size() == 1:
        return ops.masked_whiten(x, mask, shift_mean)
    if x.dtype in (torch.float16, torch.bfloat16):  # as ops.masked_whiten: fp32, then back
        return masked_whiten(x.float(), mask, shift_mean).to(x.dtype)
    valid = mask.bool()
    kept = torch.where(valid, x, torch.zeros_like(x)).double()
    count, first = _all_reduce(torch.stack([valid.double().sum(), kept.sum()])).tolist()
    mean = first / max(count, 1.0)
    second = float(_all_reduce(torch.where(valid, (x.double() - mean) ** 2, 0.0).sum()))
    var = second / max(count, 1.0)
    var = var * count / (count - 1) if count > 1 else 0.0
    whitened = (x - mean) * torch.rsqrt(torch.tensor(var + 1e-8, dtype=x.dtype, device=x.device))
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, torch.zeros_like(whitened))


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance ``[]`` of ``x`` over the masked positions of every rank
    (``ops.masked_var`` with one process)."""
    if world_size() == 1:
        return ops.masked_var(x, mask)
    valid = mask.bool()
    kept = torch.where(valid, x, torch.zeros_like(x)).double()
    count, first = _all_reduce(torch.stack([valid.double().sum(), kept.sum()])).tolist()
    mean = first / max(count, 1.0)
    second = float(_all_reduce(torch.where(valid, (x.double() - mean) ** 2, 0.0).sum()))
    var = second / (count - 1) if count > 1 else 0.0
    return torch.tensor(var, dtype=x.dtype)


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and unbiased standard deviation ``[]`` of every element of every rank's ``x``
    (exactly ``x.mean(), x.std()`` with one process): e.g. a batch std of rewards."""
    if world_size() == 1:
        return x.mean(), x.std()
    values = x.detach().double()
    size = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
    count, first = _all_reduce(torch.stack([size, values.sum()])).tolist()
    mean = first / max(count, 1.0)
    second = float(_all_reduce(((values - mean) ** 2).sum()))
    # torch.std of a single element is NaN too.
    var = second / (count - 1) if count > 1 else float("nan")
    return (
        torch.tensor(mean, dtype=x.dtype, device=x.device),
        torch.tensor(var**0.5, dtype=x.dtype, device=x.device),
    )


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``parameters`` over ranks in one all-reduce, between ``backward()``
    and clipping (nothing with one process). Each rank's loss must already be scaled by its
    :func:`share`, so the sum is the full batch's gradient. A parameter without a gradient on
    every rank keeps none; one with a gradient on some rank gets the sum."""
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    present = _all_reduce(torch.tensor([float(p.grad is not None) for p in params]))
    used = [p for p, seen in zip(params, present.tolist(), strict=True) if seen > 0]
    if not used:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(torch.float32)
    # One collective on a flat buffer (float32 on the CPU for gloo; NCCL takes the device's).
    if flat.device.type == "cpu" or dist.get_backend() != "gloo":
        dist.all_reduce(flat)
    else:
        flat = flat.cpu()
        dist.all_reduce(flat)
        flat = flat.to(grads[0].device)
    offset = 0
    for p in used:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank, in place (nothing with
    one process): a model only rank 0 changed (a reward model retrained on feedback) becomes the
    same on every rank. One collective per tensor, on the collective's device."""
    if world_size() == 1:
        return
    device = _collective_device()
    for tensor in module.state_dict(keep_vars=False).values():
        box = tensor.detach().to(device).clone()
        dist.broadcast(box, src=0)
        with torch.no_grad():
            tensor.copy_(box.to(tensor.device))


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (``flag`` with one process): every rank takes the
    same branch (stop on a signal, fail on a non-finite value) so no rank waits forever."""
    if world_size() == 1:
        return flag
    return maximum(float(flag)) > 0


def first_index(index: int) -> int:
    """The smallest ``index`` over ranks (itself with one process)."""
    if world_size() == 1:
        return index
    return int(_all_reduce(torch.tensor([float(index)]), dist.ReduceOp.MIN)[0])


#: Environment variable: how many seconds the other ranks wait for rank 0 (default 86400, a
#: day), where it works alone: a stage it builds, an online round (sampling, the ranking page,
#: retraining), a checkpoint it writes.
WAIT_TIMEOUT_ENV = "ALIGNBENCH_WAIT_TIMEOUT_S"
_waiting: dict[str, Any] = {}


def wait_timeout_s() -> float:
    """Seconds the other ranks wait for rank 0 (``ALIGNBENCH_WAIT_TIMEOUT_S``, default a day)."""
    raw = os.environ.get(WAIT_TIMEOUT_ENV, "86400")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{WAIT_TIMEOUT_ENV}={raw!r} — give a number of seconds > 0")
    return seconds


def _waiting_group() -> Any:
    """A gloo group of every rank with :func:`wait_timeout_s` as its timeout, made once (all
    ranks call this at the same point: on entering a collective). Waits for rank 0 and objects
    travel here, not on the default group: NCCL's watchdog aborts a collective after ten
    minutes (gloo's default is thirty), while rank 0 may build a stage or wait for a person
    on the ranking page for longer."""
    group = _waiting.get("group")
    if group is None or _waiting.get("world") is not dist.group.WORLD:
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_timeout_s()))
        _waiting.update(group=group, world=dist.group.WORLD)
    return group


def gather(value: T) -> list[T]:
    """Every rank's ``value`` in rank order (``[value]`` with one process); picklable values."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value, group=_waiting_group())
    return out


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` with one process): one decision, e.g. the
    checkpoint to resume from, taken where the files are written (on the waiting group: the
    others may wait up to :func:`wait_timeout_s` for it)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_waiting_group())
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing with one process), up to
    :func:`wait_timeout_s`."""
    if world_size() > 1:
        dist.barrier(group=_waiting_group())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cached stage), then the others (a cache hit);
    if it fails there, every rank raises its error (no other rank builds the stage itself)."""
    if world_size() == 1:
        yield
        return
    _waiting_group()  # every rank here at once: before rank 0 goes off to work alone
    if is_main_process():
        try:
            yield
        except Exception as exc:
            broadcast(exc)  # the others wait for this: they raise it instead of running the block
            raise
        broadcast(None)
        return
    error = broadcast(None)
    if error is not None:
        raise error
    yield


def decided_on_main(decide: Callable[[], T], meanwhile: Callable[[], None] | None = None) -> T:
    """``decide()`` run on rank 0 only (it may read and write the job folder), its answer or
    its error on every rank (``decide()`` itself with one process); the other ranks run
    ``meanwhile()`` first (their part of rank 0's work, e.g. best-of-N's answers), then wait
    on the waiting group."""
    if world_size() == 1:
        return decide()
    _waiting_group()  # every rank here at once: before rank 0 goes off to work alone
    outcome: tuple[Any, BaseException | None] = (None, None)
    if is_main_process():
        try:
            outcome = (decide(), None)
        except BaseException as exc:  # noqa: BLE001 — handed to every rank, then raised there
            outcome = (None, exc)
    elif meanwhile is not None:
        meanwhile()
    value, error = broadcast(outcome)
    if error is not None:
        raise error
    return value
