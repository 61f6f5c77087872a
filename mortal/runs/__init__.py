"""Run directories: config, environment, metrics, atomic checkpoints, results and report.

A run directory is everything needed to trust (or redo) a number:
  config.json     the resolved config
  env.json        package versions, CPU, threads, git revision, command line, date
  metrics.jsonl   one JSON line per logged epoch or step
  checkpoint.safetensors  model + optimizer + RNG state, written atomically
  results.json    the final numbers beside the paper's
  report.md       the report, with PNG learning curves
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mortal import distributed
from mortal.config import ConfigError
from mortal.runs import checkpoint as ckpt

REQUIRED_RESULT_KEYS = (
    "recipe",
    "dataset",
    "test_error_pct",
    "paper_test_error_pct",
    "epochs",
    "train_seconds",
    "examples_per_second",
)


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf; the message names the step and the layer."""


def cpu_name() -> str:
    """The CPU model string, for run records and benchmark JSON."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The git commit of the mortal source tree, with '+dirty' if it has uncommitted changes."""
    src = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(dtype: str | None = None) -> dict[str, Any]:
    """Versions, machine and thread count: what a reader needs to judge or redo a timing."""
    import numpy

    import mortal

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mortal": mortal.__version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "dtype": dtype,
        "argv": sys.argv,
        **({"processes": distributed.world(), "pipeline_stages": distributed.pipeline_stages()}
           if distributed.active() else {}),
    }


def check_finite(values: dict[str, torch.Tensor | float], step: int, where: str = "") -> None:
    """Raise NonFiniteError naming the step and each non-finite entry (e.g. a layer's loss)."""
    bad = []
    for name, v in values.items():
        x = float(v) if not isinstance(v, torch.Tensor) else float(v.detach().float().sum())
        if not math.isfinite(x):
            bad.append(f"{name}={x}")
    if bad:
        raise NonFiniteError(
            f"non-finite values at step {step}{' in ' + where if where else ''}: {', '.join(bad)}. "
            "The run stopped; its last checkpoint is intact. Lower the learning rate, "
            "use dtype=float32, or resume from the checkpoint with different settings."
        )


def same_config(old: dict[str, Any] | None, new: dict[str, Any],
                defaults: dict[str, Any] | None = None, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a run started with config `old` may resume under `new`: equal, except that keys
    added to the recipe since (absent from `old`) may appear in `new` at their `defaults`
    value, which the old code behaved as. Keys in `ignore` are not compared."""
    if old is None:
        return False
    old = {k: v for k, v in old.items() if k not in ignore}
    new = {k: v for k, v in new.items() if k not in ignore}
    added = set(new) - set(old)
    if set(old) - set(new) or any(old[k] != new[k] for k in old):
        return False
    return all(defaults is not None and k in defaults and new[k] == defaults[k] for k in added)


class Run:
    """One run directory. Training code calls `log`, `save`, `resume_state` and `finish`."""

    CHECKPOINT = "checkpoint.safetensors"

    def __init__(
        self,
        out: str | Path,
        recipe: str,
        config: dict[str, Any],
        *,
        resume: bool = False,
        dtype: str | None = None,
        quiet: bool = False,
        record_env: bool = True,
        defaults: dict[str, Any] | None = None,
        ignore: tuple[str, ...] = (),
    ) -> None:
        self.dir = Path(out)
        self.recipe = recipe
        self.config = config
        self.defaults = defaults
        self.resume = resume
        self.quiet = quiet
        self.train_seconds = 0.0
        self.metrics_path = self.dir / "metrics.jsonl"
        self.writes = distributed.is_main()  # under torch.distributed only rank 0 writes
        if not self.writes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.dir / "config.json"
        if resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old.get("recipe") != recipe or not same_config(old.get("config"), config,
                                                              defaults, ignore):
                raise ConfigError(
                    f"cannot resume {self.dir}: it was started with a different recipe or config "
                    f"({old.get('recipe')}). Use the same --set/--config, or a new --out."
                )
            # the ignored keys keep the values this directory was trained with
            config = {**config, **{k: v for k, v in old["config"].items() if k in ignore}}
        elif not resume:
            # A fresh run in an old directory starts clean, so stale metrics never mix in.
            for name in ("metrics.jsonl", "results.json", self.STAGE_DONE, self.CHECKPOINT):
                (self.dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.dir / "stages", ignore_errors=True)
        _write_json(cfg_path, {"recipe": recipe, "config": config})
        if record_env:
            _write_json(self.dir / "env.json", environment(dtype))

    @classmethod
    def trained_state(cls, out: str | Path) -> list[str]:
        """What in `out` a fresh (not resumed) run would delete that training made: its
        checkpoint, results, finished-stage record and stages. Empty when nothing is there."""
        out = Path(out)
        found = [n for n in (cls.CHECKPOINT, "results.json", cls.STAGE_DONE) if (out / n).exists()]
        stages = [p for p in (out / "stages").glob("*") if p.is_dir()]
        return found + ([f"{len(stages)} stage(s) in stages/"] if stages else [])

    # -- stages ----------------------------------------------------------------------------
    STAGE_DONE = "stage.json"

    def stage(self, name: str, ignore: tuple[str, ...] = ()) -> Run:
        """A sub-run in stages/NAME/ with its own metrics and checkpoint, for recipes made of
        several trainings (a teacher, students, a sweep). With --resume, a finished stage is
        not redone (see `done`) and an unfinished one continues from its checkpoint. `ignore`
        names config keys that only choose which stages run: a stage trained in another run
        directory that differs only in them (copied into stages/) is taken as it is."""
        return Run(self.dir / "stages" / name, f"{self.recipe}/{name}", self.config,
                   resume=self.resume, quiet=self.quiet, record_env=False,
                   defaults=self.defaults, ignore=ignore)

    def done(self) -> dict[str, Any] | None:
        """The results a stage recorded with `finish_stage`, when resuming; else None."""
        path = self.dir / self.STAGE_DONE
        out = distributed.from_main(
            lambda: json.loads(path.read_text()) if self.resume and path.exists() else None)
        if out is not None:
            self.train_seconds = float(out.get("train_seconds", 0.0))
            return out
        return None

    def stages_seconds(self) -> float:
        """The training time of every finished stage of this run, summed."""
        return sum(json.loads(p.read_text())["train_seconds"]
                   for p in (self.dir / "stages").glob(f"*/{self.STAGE_DONE}"))

    def finish_stage(self, results: dict[str, Any]) -> dict[str, Any]:
        """Record a stage's results (with its training time) so a resumed run can skip it."""
        results = {**results, "train_seconds": round(self.train_seconds, 2)}
        if self.writes:
            _write_json(self.dir / self.STAGE_DONE, results)
        return results

    # -- metrics ---------------------------------------------------------------------------
    def log(self, **metrics: Any) -> None:
        """Append one line to metrics.jsonl (floats are rounded for readability)."""
        if not self.writes:
            return
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """All logged rows."""
        return read_metrics(self.dir)

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Add the wall time of the block to `train_seconds` (kept across resumes)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.train_seconds += time.perf_counter() - t0

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Atomically checkpoint `state` after `epoch` (with RNG, clock and metrics position)."""
        if not self.writes:
            return
        n_lines = len(self.metrics())
        ckpt.save(
            self.dir / self.CHECKPOINT,
            {
                "epoch": epoch,
                "state": state,
                "rng": ckpt.rng_state(),
                "train_seconds": self.train_seconds,
                "metrics_lines": n_lines,
            },
        )

    def resume_state(self) -> tuple[int, dict[str, Any] | None]:
        """(epochs done, saved state) when resuming from a checkpoint, else (0, None)."""
        path = self.dir / self.CHECKPOINT
        saved = distributed.from_main(  # rank 0 reads, every rank gets the same state
            lambda: ckpt.load(path) if self.resume and path.exists() else None)
        if saved is None:
            return 0, None
        ckpt.set_rng_state(saved["rng"])
        self.train_seconds = float(saved["train_seconds"])
        if not self.writes:
            return int(saved["epoch"]), saved["state"]
        rows = self.metrics()[: int(saved["metrics_lines"])]
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        if not self.quiet:
            print(f"resuming {self.dir} after epoch {saved['epoch']}", file=sys.stderr)
        return int(saved["epoch"]), saved["state"]

    # -- the end -----------------------------------------------------------------------------
    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        """Write results.json and report.md; results must hold the standard keys."""
        missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
        if missing:
            raise KeyError(f"results lack {missing}")
        if not self.writes:
            return results
        _write_json(self.dir / "results.json", results)
        from mortal.runs.report import render

        render(self.dir)
        return results


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (empty if none)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def is_timing(key: str) -> bool:
    """Whether a metrics key measures the machine (wall time, matmul speed), not the model.

    Same seed and config give the same metrics except these."""
    return key.endswith("seconds") or key.endswith("gflops") or key.endswith("per_second")


def model_metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows without the timing keys: what must repeat exactly under the same seed."""
    return [{k: v for k, v in row.items() if not is_timing(k)} for row in rows]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
