"""Scaling out on this machine, as JSON: 1 process x 2 threads against 2 processes x 1 thread.

    python benchmarks/distributed.py [--steps 20] [--widths 2000,2000,2000,2000] [--dtype bfloat16]

Runs (each in fresh processes, started here with torchrun's environment variables over gloo):
  ff_single     FF training step of ff-supervised-mnist, one process with 2 threads
  ff_single_1thread  the same with 1 thread (context: on a busy machine 2 threads can lose)
  ff_dp         the same global batch split over 2 processes, gradients all-reduced per layer
  ff_pipeline   2 pipeline stages of consecutive layers, activations sent forward
  bp_single     backprop training step of bp-mnist-mlp (same widths), one process, 2 threads
  bp_dp         the same over 2 processes, gradients all-reduced as autograd produces them
For each: throughput (global examples per second, after warm-up), bytes sent per example
(counted payload, and the bytes the process actually wrote to its sockets, from
/proc/self/io `wchar`, which on a socket-only loop is the gloo traffic), and activations stored
per example (the peak bytes autograd holds for a backward pass at once, measured with
saved-tensor hooks; FF frees each layer's after its own backward, backprop holds every
layer's until the end). Inputs are random pixels with labels embedded: the same shapes and
cost as MNIST. The machine is shared; its load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mortal import config as configs
from mortal import distributed
from mortal.arch.dense import MLP
from mortal.data.negatives import embed_label, wrong_labels
from mortal.loop import autocast, make_optimizer
from mortal.recipes import bp_mnist_mlp, ff_supervised_mnist
from mortal.runs import environment

MODES = ("ff_single", "ff_single_1thread", "ff_dp", "ff_pipeline", "bp_single", "bp_dp")


def written_bytes() -> int:
    """Bytes this process has passed to write()-family calls (sockets included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


class SavedBytes:
    """Peak bytes of activations saved for backward that are alive at once: saved tensors with
    a row per example (`rows`), not the low-precision weight copies autocast saves. `reset`
    marks the point where every earlier graph has been freed (an FF layer's backward is done)."""

    def __init__(self, rows: tuple[int, ...]) -> None:
        self.rows = rows
        self.live: dict[int, int] = {}
        self.peak = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 1 or t.shape[0] not in self.rows:
            return t
        self.live[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        self.peak = max(self.peak, sum(self.live.values()))
        return t

    def reset(self, *_: object) -> None:
        self.live = {}


def _timed(step, steps: int, sync) -> tuple[float, int]:
    """(seconds for `steps` steps, socket bytes written during them)."""
    sync()
    w0, t0 = written_bytes(), time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0, written_bytes() - w0


def worker(mode: str, args: argparse.Namespace) -> dict:
    """Run one mode in this process (one rank of it) and return its measurements."""
    distributed.init(pipeline=2 if mode == "ff_pipeline" else 0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = distributed.world()
    sets = {"widths": args.widths, "dtype": args.dtype}
    if mode.startswith("ff"):
        cfg = configs.build(ff_supervised_mnist.Config, sets)
        b_global = cfg.batch_size
    else:
        cfg = configs.build(bp_mnist_mlp.Config, sets)
        b_global = cfg.batch_size
    b = b_global // w if mode.endswith("dp") else b_global
    x = torch.rand(b, 784)
    y = torch.randint(0, 10, (b,))
    saved = SavedBytes((b, 2 * b))
    if mode.startswith("ff"):
        net = ff_supervised_mnist.build(cfg, 784)
        for layer in net.layers:
            layer.register_forward_pre_hook(saved.reset)
        if mode == "ff_dp":
            net.grads = distributed.GradAverager()
        if mode == "ff_pipeline":
            net.pipe = distributed.Pipe(len(net.layers))
        x_pos, x_neg = embed_label(x, y), embed_label(x, wrong_labels(y))
        first = net.pipe is None or net.pipe.first

        def step() -> None:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                net.train_step(x_pos if first else None, x_neg if first else None)

        def count() -> int:
            if net.grads is not None:
                return net.grads.bytes_reduced
            return net.pipe.bytes_sent if net.pipe is not None else 0
    else:
        model = MLP(784, cfg.widths, 10)
        opt = make_optimizer("adam", model.parameters(), cfg.lr)
        averager = distributed.GradAverager() if mode == "bp_dp" else None
        sync_grads = averager.hook(list(model.parameters())) if averager else None

        def step() -> None:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                with autocast(x.device, args.dtype):
                    loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            saved.reset()
            if sync_grads is not None:
                sync_grads()
            opt.step()

        def count() -> int:
            return averager.bytes_reduced if averager else 0

    def sync() -> None:
        if mode == "ff_pipeline":
            net.pipe.wait()
        if w > 1:
            torch.distributed.barrier()

    before = count()
    for _ in range(args.warmup):
        step()
    warm_count = count() - before
    seconds, wrote = _timed(step, args.steps, sync)
    per_step_count = (count() - before - warm_count) / args.steps
    examples = args.steps * b_global  # global examples trained in the timed steps
    out = {
        "rank": distributed.rank(),
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "payload_bytes_per_example": per_step_count * args.steps / examples,
        "socket_bytes_written_per_example": wrote / examples,
        # per example of the local batch (FF: its positive and its negative row together)
        "activation_bytes_stored_per_example": saved.peak / b,
        "local_batch": b,
        "global_batch": b_global,
    }
    if mode == "ff_pipeline":
        out["layers"] = [net.pipe.lo, net.pipe.hi]
        # the message kept until it is sent: one layer boundary's activations
        out["in_flight_message_bytes_per_example"] = net.pipe.bytes_sent / (
            (args.steps + args.warmup) * b_global)
    distributed.shutdown()
    return out


def launch(mode: str, args: argparse.Namespace) -> list[dict]:
    """Start the processes of one mode and collect each rank's JSON."""
    nproc = 2 if mode.endswith(("dp", "pipeline")) else 1
    threads = 1 if nproc == 2 or mode.endswith("1thread") else 2
    port = distributed.free_port()
    cmd = [sys.executable, __file__, "--worker", mode, "--threads", str(threads),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--widths", args.widths,
           "--dtype", args.dtype]
    procs = []
    for r in range(nproc):
        env = distributed.local_env(r, nproc, port) if nproc > 1 else dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f"{mode}: a worker failed (exit {p.returncode})")
        outs.append(json.loads(stdout))
    return outs


def summarise(mode: str, ranks: list[dict], threads: int) -> dict:
    """One mode's numbers: the slowest rank's time, bytes summed over ranks."""
    r0 = ranks[0]
    examples = r0["examples_per_s"] * r0["seconds"]
    out = {
        "processes": len(ranks),
        "threads_per_process": threads,
        "global_batch": r0["global_batch"],
        "examples_per_s": round(examples / max(r["seconds"] for r in ranks), 1),
        "payload_bytes_sent_per_example": round(sum(r["payload_bytes_per_example"]
                                                    for r in ranks), 1),
        "socket_bytes_written_per_example": round(sum(r["socket_bytes_written_per_example"]
                                                      for r in ranks), 1),
        "activation_bytes_stored_per_example_per_process": [
            round(r["activation_bytes_stored_per_example"], 1) for r in ranks],
    }
    if mode in ("ff_dp", "bp_dp"):
        out["note"] = ("payload = gradient bytes each process all-reduces per example; a ring "
                       "all-reduce sends 2(w-1)/w of it per process")
    if mode == "ff_pipeline":
        out["layers_per_stage"] = [r["layers"] for r in ranks]
        out["in_flight_message_bytes_per_example"] = round(
            ranks[0]["in_flight_message_bytes_per_example"], 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--widths", default="2000,2000,2000,2000")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    load_before = os.getloadavg()
    results = {m: summarise(m, launch(m, args), 1 if m.endswith(("dp", "pipeline", "1thread"))
                            else 2) for m in args.modes.split(",")}
    env = environment(args.dtype)
    out = {
        "benchmark": "distributed",
        "net": [784, *map(int, args.widths.split(","))],
        "dtype": args.dtype,
        "steps": args.steps,
        "results": results,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpu": env["cpu"], "cpu_count": env["cpu_count"], "torch": env["torch"],
        "date": env["date"], "git_revision": env["git_revision"],
    }
    for kind in ("ff", "bp"):
        if f"{kind}_single" in results and f"{kind}_dp" in results:
            out[f"{kind}_dp_speedup"] = round(results[f"{kind}_dp"]["examples_per_s"]
                                              / results[f"{kind}_single"]["examples_per_s"], 3)
    if "ff_single" in results and "ff_pipeline" in results:
        out["ff_pipeline_speedup"] = round(results["ff_pipeline"]["examples_per_s"]
                                           / results["ff_single"]["examples_per_s"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
