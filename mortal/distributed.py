"""Scaling out on torch.distributed: data parallel training and a forward-only FF layer pipeline.

Processes are started the standard way, by torchrun (`torchrun --nproc-per-node N -m mortal run
RECIPE ...`, or `mortal run RECIPE --nproc N`, which calls torchrun with the same arguments);
`init` reads torchrun's environment variables and joins the group over gloo (CPU) or NCCL (GPU).

Data parallel: every process holds the whole net. Each global batch of `batch_size` examples
(the same batches a single process would draw, from `epoch_order`) is cut into `world` equal
slices and process r trains on slice r (`shard`), so the process count changes neither the
batches nor the result beyond floating-point reduction order, and a checkpoint resumes under
any count. Gradients are averaged across processes (`GradAverager`): FF layers start their
all-reduce as soon as their own backward is done and the next layer computes meanwhile.

Pipeline (`--pipeline STAGES`, FF only): process r owns a block of consecutive layers (`Pipe`).
A minibatch (positive and negative rows together) enters stage 0; each stage updates its own
layers and sends the normalised activity of its last layer to the next stage. Nothing flows
backwards, and since FF's next-layer input is computed from the activity *before* the layer's
update, the stages reproduce a single process bit for bit.

Only rank 0 writes files (`is_main`); values that rank 0 computes alone (evaluations, the
hard-negative table, a resumed checkpoint) reach the others through `from_main`.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mortal.config import ConfigError
from mortal.loop import epoch_order

T = TypeVar("T")

TIMEOUT_ENV = "MORTAL_DIST_TIMEOUT"  # seconds a collective may wait (default 1800)
DEFAULT_TIMEOUT = 1800.0
_pipeline_stages = 0


# --- the process group ---------------------------------------------------------------------


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(pipeline: int = 0, timeout: float | None = None) -> bool:
    """Join the process group torchrun described (gloo on CPU, NCCL on GPU); returns whether
    this is a distributed run. `pipeline` > 0 asks for that many FF pipeline stages, one per
    process. Collectives wait at most `timeout` seconds (default $MORTAL_DIST_TIMEOUT or 1800),
    so a lost peer ends the run instead of hanging it."""
    global _pipeline_stages
    if pipeline < 0:
        raise ConfigError(f"--pipeline must be >= 0, not {pipeline}")
    if not launched():
        if pipeline > 1:
            raise ConfigError(f"--pipeline {pipeline} needs {pipeline} processes: run "
                              f"`mortal run ... --nproc {pipeline}` or torchrun")
        return False
    if not dist.is_initialized():
        seconds = timeout if timeout is not None else float(
            os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=seconds))
    if pipeline > 1 and pipeline != world():
        raise ConfigError(f"--pipeline {pipeline} needs exactly {pipeline} processes, "
                          f"not {world()} (one stage per process)")
    _pipeline_stages = pipeline if pipeline > 1 else 0
    return True


def shutdown() -> None:
    """Leave the process group (a no-op when there is none). Every process first waits at a
    barrier, so none tears down its sockets (rank 0 also hosts the rendezvous store) while a
    peer is still using them; gloo can abort a process that loses a peer mid-teardown."""
    global _pipeline_stages
    _pipeline_stages = 0
    if active():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
        gc.collect()  # drop the backend's last references while the interpreter is whole


def active() -> bool:
    """Whether a process group is up (even of one process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints results: rank 0, or the only process."""
    return rank() == 0


def pipeline_stages() -> int:
    """The FF pipeline's stage count when running as a pipeline, else 0 (data parallel)."""
    return _pipeline_stages if active() else 0


def data_parallel() -> bool:
    """Whether gradients must be averaged across processes (distributed, not a pipeline)."""
    return world() > 1 and not pipeline_stages()


def from_main(fn: Callable[[], T]) -> T:
    """fn() computed on rank 0 only and sent to every rank (just fn() in a single process):
    for evaluations, hard-negative tables and checkpoints, which need no second copy."""
    if world() == 1:
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def config_hash(recipe: str, config: dict[str, Any]) -> str:
    """sha256 of the recipe name and resolved config, in canonical JSON."""
    text = json.dumps({"recipe": recipe, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(recipe: str, config: dict[str, Any]) -> None:
    """Refuse to start when the processes resolved different recipes or configs (a stale
    file, a different --set): they would train different nets while averaging gradients."""
    if world() == 1:
        return
    mine = config_hash(recipe, config)
    hashes: list[Any] = [None] * world()
    dist.all_gather_object(hashes, mine)
    if len(set(hashes)) > 1:
        ranks = ", ".join(f"rank {r}: {h[:12]}" for r, h in enumerate(hashes))
        raise ConfigError(f"the processes resolved different configs ({ranks}); every rank "
                          "must get the same recipe, --set and --config")


# --- data parallel -----------------------------------------------------------------------


def shard(batch: torch.Tensor, r: int | None = None, w: int | None = None) -> torch.Tensor:
    """Rank r's slice of a global batch (rows r*b .. (r+1)*b with b = len / w)."""
    r, w = rank() if r is None else r, world() if w is None else w
    if len(batch) % w:
        raise ConfigError(f"batch_size {len(batch)} does not split over {w} processes: "
                          f"use a multiple of {w}")
    b = len(batch) // w
    return batch[r * b : (r + 1) * b]


def epoch_shard(n: int, batch_size: int, seed: int, epoch: int, r: int | None = None,
                w: int | None = None) -> torch.Tensor:
    """The examples rank r reads in `epoch`, in order: its slice of every global batch of the
    epoch's permutation. Deterministic in (seed, epoch); the shards of all ranks are disjoint
    and together are the single-process epoch (without its last partial batch)."""
    r, w = rank() if r is None else r, world() if w is None else w
    if batch_size % w:
        raise ConfigError(f"batch_size {batch_size} does not split over {w} processes")
    steps = n // batch_size
    order = epoch_order(n, seed, epoch)[: steps * batch_size]
    return order.view(steps, w, batch_size // w)[:, r].reshape(-1)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over processes (in place; `t` itself in a single process)."""
    if world() > 1:
        dist.all_reduce(t)
    return t


class _GlobalMean(torch.autograd.Function):
    """Forward: the mean over processes. Backward: the gradient passes to the local value, so
    that after gradients are averaged it equals the single-process gradient."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out)
        return out.div_(dist.get_world_size())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class GradAverager:
    """Averages gradients across processes with asynchronous all-reduces: `start(params)` as
    soon as the gradients exist, `finish(handle)` right before the optimiser needs them. It
    counts the bytes it all-reduces (a ring all-reduce sends 2 (w-1)/w times that)."""

    def __init__(self) -> None:
        self.bytes_reduced = 0

    def start(self, params: Iterable[torch.nn.Parameter]) -> list[tuple[Any, torch.Tensor]]:
        """Launch the all-reduce of each gradient; returns the handles to wait on."""
        handles = []
        for p in params:
            if p.grad is not None:
                self.bytes_reduced += p.grad.numel() * p.grad.element_size()
                handles.append((dist.all_reduce(p.grad, async_op=True), p.grad))
        return handles

    def finish(self, handles: list[tuple[Any, torch.Tensor]]) -> None:
        """Wait for the all-reduces and turn the sums into means."""
        w = dist.get_world_size()
        for work, grad in handles:
            work.wait()
            grad.div_(w)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The batch statistic `t` averaged over processes (gradient to the local value), so a
        statistic of the global batch, e.g. FF's peer-normalisation mean, is the same as one
        process computes on the combined batch."""
        self.bytes_reduced += t.numel() * t.element_size()
        return _GlobalMean.apply(t)

    def hook(self, params: Sequence[torch.nn.Parameter]) -> Callable[[], None]:
        """Start each parameter's all-reduce from autograd the moment its gradient is complete
        (overlapping the rest of the backward pass, as DDP does); returns the function to call
        before the optimiser step. `close` removes the hooks."""
        pending: list[tuple[Any, torch.Tensor]] = []

        def ready(p: torch.Tensor) -> None:
            pending.extend(self.start([p]))

        self._hooks = [p.register_post_accumulate_grad_hook(ready)
                       for p in params if p.requires_grad]

        def wait() -> None:
            self.finish(pending)
            pending.clear()

        return wait

    def close(self) -> None:
        """Remove the hooks `hook` installed."""
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []


# --- the FF pipeline ------------------------------------------------------------------------

_DTYPE_CODES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def blocks(n_layers: int, stages: int) -> list[tuple[int, int]]:
    """(first, end) layer of each stage: consecutive blocks, sizes differing by at most one,
    the larger blocks first."""
    if not 1 <= stages <= n_layers:
        raise ConfigError(f"--pipeline {stages} needs between 1 and {n_layers} stages "
                          f"(one layer at least per stage)")
    base, extra = divmod(n_layers, stages)
    out, lo = [], 0
    for s in range(stages):
        hi = lo + base + (1 if s < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class Pipe:
    """This process's block of layers and its two neighbours. A message is a fixed 8-int64
    header (dtype, rank of the tensor, its shape) then the tensor; sends are asynchronous, so
    a stage computes its next minibatch while the last one is in flight (one in flight)."""

    HEADER = 8

    def __init__(self, n_layers: int, stages: int | None = None, r: int | None = None) -> None:
        self.stage = rank() if r is None else r
        self.stages = stages or world()
        self.lo, self.hi = blocks(n_layers, self.stages)[self.stage]
        self.first = self.stage == 0
        self.last = self.stage == self.stages - 1
        self.bytes_sent = 0
        self.messages = 0
        self._in_flight: list[Any] = []
        self._keep: list[torch.Tensor] = []

    def send(self, x: torch.Tensor) -> None:
        """Send an activity tensor to the next stage (waits for the previous send first)."""
        self.wait()
        x = x.contiguous()
        if x.ndim > self.HEADER - 2:
            raise ValueError(f"cannot pipe a tensor of {x.ndim} dimensions")
        head = torch.zeros(self.HEADER, dtype=torch.int64)
        head[0], head[1] = _DTYPE_CODES.index(x.dtype), x.ndim
        head[2 : 2 + x.ndim] = torch.tensor(x.shape)
        dst = self.stage + 1
        self._keep = [head, x]
        self._in_flight = [dist.isend(head, dst), dist.isend(x, dst)]
        self.bytes_sent += head.numel() * 8 + x.numel() * x.element_size()
        self.messages += 1

    def recv(self) -> torch.Tensor:
        """Receive the previous stage's activity tensor."""
        head = torch.empty(self.HEADER, dtype=torch.int64)
        dist.recv(head, self.stage - 1)
        ndim = int(head[1])
        x = torch.empty(head[2 : 2 + ndim].tolist(), dtype=_DTYPE_CODES[int(head[0])])
        dist.recv(x, self.stage - 1)
        return x

    def wait(self) -> None:
        """Wait until the last send has left."""
        for work in self._in_flight:
            work.wait()
        self._in_flight, self._keep = [], []


def share_layers(net: Any, pipe: Pipe) -> None:
    """After a pipelined epoch, copy every stage's layers, optimiser states and peer means to
    every process, so rank 0 holds the whole trained net for evaluation and checkpoints."""
    pipe.wait()
    for s, (lo, hi) in enumerate(blocks(len(net.layers), pipe.stages)):
        for i in range(lo, hi):
            box = [None]
            if pipe.stage == s:
                box = [{"layer": net.layers[i].state_dict(),
                        "optimizer": net.optimizers[i].state_dict(),
                        "peer": net.peer_means[i]}]
            dist.broadcast_object_list(box, src=s)
            if pipe.stage != s:
                got = box[0]
                net.layers[i].load_state_dict(got["layer"])
                net.optimizers[i].load_state_dict(got["optimizer"])
                net.peer_means[i] = got["peer"]


# --- launching -------------------------------------------------------------------------------


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """The torchrun command that starts `nproc` local processes of `python -m mortal ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.5",
            "-m", "mortal", *module_args]


def relaunch(nproc: int, module_args: Sequence[str]) -> int:
    """Run `mortal ARGS` as `nproc` processes under torchrun; returns torchrun's exit code,
    after saying which worker failed when one did (torchrun has stopped the others)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    args, skip = [], False
    for a in module_args:  # the workers need no --nproc (and torchrun would take it for its own)
        if not skip and not a.startswith("--nproc"):
            args.append(a)
        skip = a == "--nproc"
    code = subprocess.run(torchrun_command(nproc, args), env=env).returncode
    if code != 0:
        print(f"mortal: the distributed run failed (torchrun exit code {code}): a worker "
              "stopped, and the launcher ended the others. The last checkpoint is intact; "
              "continue with --resume (with any process count).", file=sys.stderr)
    return code


def free_port() -> int:
    """A free TCP port on localhost, for starting workers without torchrun (tests, benchmark)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(r: int, w: int, port: int) -> dict[str, str]:
    """The environment torchrun would give local worker r of w (rendezvous on `port`)."""
    return {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(w),
            "LOCAL_WORLD_SIZE": str(w), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}
