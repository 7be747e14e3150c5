"""The other ranks wait for rank 0 as long as it works alone, not as long as the default group.

Rank 0 alone builds a stage (``main_process_first``), runs an online round (``decided_on_main``)
or writes a checkpoint (then ``barrier``); the other ranks wait in a collective meanwhile. On the
default group that wait ends at its timeout, NCCL's watchdog's ten minutes, so a stage or an
online round longer than that killed a multi-GPU job. alignbench waits on a gloo group of its own
whose timeout is ``ALIGNBENCH_WAIT_TIMEOUT_S`` (default a day). Tested with two gloo processes
whose default group gives up after 0.5 s while rank 0 works 2 s: every wait succeeds, and the same
wait on the default group times out (the control).
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from alignbench import ConfigError, distributed

WORK_S = 2.0  # rank 0's work alone, longer than the default group's timeout
DEFAULT_TIMEOUT_S = 0.5


def _work() -> str:
    time.sleep(WORK_S)
    return "decided on rank 0"


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    """One rank: the three waits, then the control on the default group."""
    # A regression then fails in a minute instead of hanging for the default day.
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), ALIGNBENCH_WAIT_TIMEOUT_S="60"
    )
    # Joined with the usual timeout (a rank spawned late on a busy machine still joins), then
    # the default group's shortened.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    dist.distributed_c10d._set_pg_timeout(timedelta(seconds=DEFAULT_TIMEOUT_S))
    results: dict[str, str] = {}
    results["decided_on_main"] = distributed.decided_on_main(_work)
    with distributed.main_process_first():
        if rank == 0:
            _work()
        results["main_process_first"] = "left"
    if rank == 0:
        _work()
    distributed.barrier()
    results["barrier"] = "passed"
    results["gather"] = "/".join(distributed.gather(f"rank {rank}"))
    # A decision rank 0 hands over after working alone (an evaluation's outcome, a checkpoint).
    if rank == 0:
        _work()
    results["broadcast"] = distributed.broadcast(f"from rank {rank}")
    # The control: the same wait on the default group gives up after its timeout.
    box = ["decided on rank 0"]
    try:
        if rank == 0:
            _work()
        dist.broadcast_object_list(box, src=0)
        results["default_group"] = "received"
    except RuntimeError as exc:
        results["default_group"] = f"failed: {type(exc).__name__}"
    (out / f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_the_other_ranks_wait_for_rank_0_longer_than_the_default_timeout(tmp_path: Path) -> None:
    """Rank 0 works 2 s alone in each of decided_on_main, main_process_first, before a barrier
    and before a broadcast; the default group's timeout is 0.5 s; rank 1 gets through every one
    (it failed at the first before), while the control wait on the default group fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, tmp_path), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in ranks:
        assert result["decided_on_main"] == "decided on rank 0"
        assert result["main_process_first"] == "left"
        assert result["barrier"] == "passed"
        assert result["gather"] == "rank 0/rank 1"
        assert result["broadcast"] == "from rank 0"
    assert ranks[1]["default_group"].startswith("failed"), ranks[1]


def test_the_wait_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ALIGNBENCH_WAIT_TIMEOUT_S``: a day by default, a number of seconds > 0, else one line."""
    monkeypatch.delenv(distributed.WAIT_TIMEOUT_ENV, raising=False)
    assert distributed.wait_timeout_s() == 86400
    monkeypatch.setenv(distributed.WAIT_TIMEOUT_ENV, "7200")
    assert distributed.wait_timeout_s() == 7200
    for bad in ("0", "-5", "soon", "inf", "nan"):
        monkeypatch.setenv(distributed.WAIT_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match="ALIGNBENCH_WAIT_TIMEOUT_S=.* give a number"):
            distributed.wait_timeout_s()
