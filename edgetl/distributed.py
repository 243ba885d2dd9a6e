"""Distributed fine-tuning: `edgetl build --nproc N` runs the build under torch.distributed.run (torchrun).

Global rank 0 runs the whole pipeline and is the only process that writes the run directory. Every other rank is a
follower: it waits for rank 0 to broadcast a fine-tuning job (the model, its settings and the train images' paths),
trains its share of every epoch inside DistributedDataParallel, and waits for the next job. So a follower needs the
dataset at the same path as rank 0, but no run directory and no recipe; jobs travel over the process group (pickled
by torch's object collectives: run the group on a trusted network, as torchrun itself requires).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.errors import DistributedError, first_line

STATUS_ENV = "EDGETL_DDP_STATUS"  # rank 0 writes {"exit_code": n} here; the launcher exits with it
STDERR_ENV = "EDGETL_DDP_STDERR"  # path of the launcher's stderr, which the ranks reopen past torchrun's own
CHILD_ENV = "EDGETL_DDP_CHILD"
_TIMEOUT = datetime.timedelta(days=1)  # followers wait for rank 0 through export and bench, which can take hours


@dataclass(frozen=True)
class Launch:
    """Where this node sits in a torchrun job."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def needed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


def is_child() -> bool:
    """Whether this process is a rank started by `launch`."""
    return os.environ.get(CHILD_ENV) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether a process group of more than one process is running in this process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def launch(build_args: list[str], where: Launch) -> int:
    """Run `edgetl build *build_args` under torch.distributed.run on this node; return the build's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={where.nproc}"]
    if where.nnodes == 1:
        cmd.append("--standalone")  # a free local port, no address to give
    else:
        cmd += [f"--nnodes={where.nnodes}", f"--node-rank={where.node_rank}", f"--master-addr={where.master_addr}",
                f"--master-port={where.master_port}"]
    cmd += ["-m", "edgetl.cli", "build", *build_args]
    env = dict(os.environ)
    env[CHILD_ENV] = "1"
    # Rank 0 works alone outside fine-tuning (probe, export, verify, bench) and gets every core then; during a
    # distributed fine-tune each process takes its share (`train_threads`).
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    # torchrun's own stderr (its tracebacks when a rank fails) is captured below; the ranks reopen ours instead.
    # torchrun closes inherited descriptors, so they get a path to it (Linux; elsewhere they write to torchrun's).
    env[STDERR_ENV] = f"/proc/{os.getpid()}/fd/2"
    with tempfile.TemporaryDirectory(prefix="edgetl-ddp-") as tmp:
        status = Path(tmp) / "status.json"
        env[STATUS_ENV] = str(status)
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if status.is_file():
            return int(json.loads(status.read_text())["exit_code"])
        if proc.returncode == 0 and where.node_rank > 0:
            return 0  # a follower node: the run directory is written on node 0
        raise DistributedError(_failure(proc.returncode, proc.stderr))


def _failure(code: int, agent_stderr: str) -> str:
    lines = [line.strip() for line in agent_stderr.splitlines() if "exitcode" in line or "Signal" in line
             or "error" in line.lower()]
    detail = f" ({lines[-1]})" if lines else ""
    return (f"torch.distributed.run exited with {code}{detail}: a process of the distributed build failed or could "
            "not reach the others. Check that every node runs the same command with the same --nnodes, "
            "--master-addr and --master-port, that the port is open, and that the dataset is at the same path on "
            "every node.")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc` is the process group failing (a peer gone, a broken connection), not the training itself."""
    import torch.distributed as dist

    return isinstance(exc, getattr(dist, "DistError", ())) or "gloo" in str(exc)


def peer_lost(exc: BaseException) -> DistributedError:
    """The error rank 0 raises when another process of the fine-tune is gone mid-collective."""
    _ignore_launcher()
    return DistributedError(f"another process of the distributed fine-tune stopped ({first_line(exc)}); this process cannot "
                            "go on without it. Its own error, if it printed one, is above. Completed stages are kept: "
                            "run the same command again to resume.")


def _ignore_launcher() -> None:
    """Rank 0 is failing already: torchrun's SIGTERM must not cut short the writing of the failed summary."""
    if rank() == 0 and is_child():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stopped_by_launcher(signum, frame) -> None:
    _ignore_launcher()
    raise DistributedError("torch.distributed.run stopped this build (SIGTERM): another process of it failed. Its "
                           "own error, if it printed one, is above. Completed stages are kept: run the same command "
                           "again to resume.")


def start() -> None:
    """In a rank started by `launch`: point stderr at the user's terminal and join the process group."""
    import torch.distributed as dist

    path = os.environ.get(STDERR_ENV)
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass  # no /proc, or the launcher is gone: keep torchrun's stderr
    if rank() == 0:  # torchrun ends the others with SIGTERM when one process fails: rank 0 records why and exits
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    # gloo: edgetl fine-tunes on the CPU (nccl would need the model and batches on CUDA devices, which it never uses).
    dist.init_process_group(backend="gloo", timeout=_TIMEOUT)


def finish(exit_code: int) -> None:
    """Rank 0: record the build's exit code for the launcher, then release the followers and leave the group.
    After a failure rank 0 exits at once with the code instead: a follower may be inside a collective of the
    training that failed, and only torchrun tearing the job down reliably frees it."""
    import torch.distributed as dist

    status = os.environ.get(STATUS_ENV)
    if status:
        Path(status).write_text(json.dumps({"exit_code": exit_code}))
    if exit_code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    if active():
        broadcast(None)  # no more jobs
    if dist.is_initialized():
        dist.destroy_process_group()


def train_threads() -> int:
    """Torch threads per process while every process of this machine trains."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def follow(handle: Callable[[Any], None]) -> None:
    """A follower rank: `handle(job)` for every job rank 0 broadcasts (edgetl.train.follow_job for a fine-tune)
    until it sends None, then leave the group. The handler is given, so this module needs no training code."""
    import torch.distributed as dist

    try:
        while (job := broadcast(None)) is not None:
            handle(job)
    except Exception as exc:
        status = os.environ.get(STATUS_ENV)
        if not (status and Path(status).is_file()):  # else rank 0 stopped on purpose and has said why
            print(f"edgetl: distributed error: rank {rank()} stopped: {type(exc).__name__}: "
                  f"{first_line(exc)}", file=sys.stderr, flush=True)
        os._exit(1)
    dist.destroy_process_group()


def broadcast(value):
    """`value` from rank 0, on every rank."""
    import torch.distributed as dist

    message = [value]
    dist.broadcast_object_list(message, src=0)
    return message[0]
