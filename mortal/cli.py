"""The `mortal` command line: run recipes, list them, re-render reports, manage datasets."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
from pathlib import Path

from mortal import config as configs


def _cmd_recipes(args: argparse.Namespace) -> int:
    from mortal.recipes import all_recipes

    for r in all_recipes():
        paper = "n/a" if r.paper_test_error_pct is None else f"{r.paper_test_error_pct} %"
        print(f"{r.name}\n  paper:   {r.paper}\n  setting: {r.setting}\n"
              f"  paper test error: {paper}")
        if args.verbose:
            print("  config keys:\n" + configs.describe_fields(r.config).replace("\n", "\n  "))
        print()
    return 0


def _latest_run(recipe: str) -> Path | None:
    runs = sorted(Path("runs").glob(f"{recipe}-*"))
    return runs[-1] if runs else None


def _run_dir(args: argparse.Namespace, recipe: str) -> Path:
    """--out, else with --resume the newest runs/RECIPE-*, else a new runs/RECIPE-TIME."""
    if args.out:
        return Path(args.out)
    if args.resume and (latest := _latest_run(recipe)):
        return latest
    return Path("runs") / f"{recipe}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _recorded_config(out: Path) -> dict:
    """The config a run directory was started with ({} when there is none)."""
    try:
        return json.loads((out / "config.json").read_text()).get("config", {})
    except (OSError, ValueError):
        return {}


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from mortal import distributed
    from mortal.recipes import get
    from mortal.runs import Run

    recipe = get(args.recipe)
    overrides = configs.load_toml(args.config) if args.config else {}
    overrides.update(configs.parse_sets(args.set or []))
    out = _run_dir(args, recipe.name)
    if not args.resume and not args.overwrite and (state := Run.trained_state(out)):
        raise configs.ConfigError(
            f"{out} already holds a run ({', '.join(state)}). Continue it with --resume, start "
            f"again with --overwrite (this deletes them), or choose a new --out.")
    recorded = _recorded_config(out) if args.resume else {}
    if "dtype" in recorded and "dtype" not in overrides:
        # a run resumes in the dtype it started in, wherever dtype=auto would now land
        overrides["dtype"] = recorded["dtype"]
    cfg = configs.build(recipe.config, overrides)
    nproc = args.nproc or args.pipeline
    if nproc > 1 and not distributed.launched():  # start the processes, this one waits
        return distributed.relaunch(nproc, args.argv)
    if distributed.init(args.pipeline):
        distributed.check_same_config(recipe.name, configs.to_dict(cfg))
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(out, recipe.name, configs.to_dict(cfg), resume=args.resume,
              dtype=getattr(cfg, "dtype", None), quiet=args.quiet or not distributed.is_main(),
              defaults=recipe.past_defaults())
    if not run.quiet:
        print(f"{recipe.name}: {recipe.setting}\nrun directory: {out}", file=sys.stderr)
        auto = {f.name: f.default for f in dataclasses.fields(cfg)}.get("dtype") == "auto"
        if auto and "dtype" not in overrides and cfg.dtype == "float32":
            print("dtype: float32, since this machine has no native bf16 matmul (AMX or "
                  "AVX512-BF16 on a CPU); --set dtype=bfloat16 forces it", file=sys.stderr)
    results = run.finish(recipe.train(cfg, run))
    main_process = distributed.is_main()
    distributed.shutdown()  # leave the group together, before the interpreter tears down
    if not main_process:
        return 0
    paper = results["paper_test_error_pct"]
    print(json.dumps(results, indent=2))
    line = f"{recipe.name}: test error {results['test_error_pct']:.2f} %"
    line += f" (paper: {paper} %)" if paper is not None else " (no paper number for this setting)"
    line += f"; {results['train_seconds']:.0f} s training; report: {out / 'report.md'}"
    print(line)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mortal.runs.report import render

    print(render(args.run_dir))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from mortal.runs.report import summary

    text = summary(args.paths)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from mortal import data

    if args.data_cmd == "list":
        for name in data.names():
            print(data.describe(name))
        return 0
    if args.data_cmd == "check":
        print(data.check(args.name, root=args.root))
        return 0
    if args.data_cmd == "fetch":
        print(data.fetch(args.name, dest=args.dest))
        return 0
    raise AssertionError(args.data_cmd)


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="mortal", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train a recipe and write a run directory")
    r.add_argument("recipe")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--config", metavar="FILE.toml", help="config keys from a TOML file")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/RECIPE-TIME)")
    start = r.add_mutually_exclusive_group()  # continue a run, or delete it: not both
    start.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    start.add_argument("--overwrite", action="store_true",
                   help="start again in an --out directory that holds a run, deleting its "
                        "checkpoints, stages and results")
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="data parallel over N local processes (launched through torchrun)")
    r.add_argument("--pipeline", type=int, default=0, metavar="STAGES",
                   help="FF only: one block of consecutive layers per process, data streaming "
                        "forward (STAGES processes; implies --nproc STAGES)")
    r.set_defaults(func=_cmd_run)

    rc = sub.add_parser("recipes", help="list recipes with their paper numbers")
    rc.add_argument("-v", "--verbose", action="store_true", help="also list config keys")
    rc.set_defaults(func=_cmd_recipes)

    rp = sub.add_parser("report", help="re-render RUN_DIR/report.md")
    rp.add_argument("run_dir")
    rp.set_defaults(func=_cmd_report)

    rs = sub.add_parser("results", help="table of every finished run under PATHS (RESULTS.md)")
    rs.add_argument("paths", nargs="+", help="run directories or folders holding them")
    rs.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    rs.set_defaults(func=_cmd_results)

    d = sub.add_parser("data", help="list, check or fetch datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    dsub.add_parser("list", help="datasets and where they were found")
    dc = dsub.add_parser("check", help="validate a dataset (exit 0 when valid)")
    dc.add_argument("name")
    dc.add_argument("--root", help="the dataset's own folder")
    df = dsub.add_parser("fetch", help="download or install a dataset into the cache")
    df.add_argument("name")
    df.add_argument("--dest", help="folder to put it in (default: the cache)")
    d.set_defaults(func=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the sub-command, turning known errors into one clear message."""
    from torch.distributed import DistError

    from mortal import distributed
    from mortal.data import DataError
    from mortal.runs import NonFiniteError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (DistError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, DistError) and not (
                distributed.world() > 1 and ("gloo" in text or "NCCL" in text)):
            raise
        print(f"mortal: rank {distributed.rank()} lost contact with another process of this "
              f"distributed run ({text.splitlines()[0] if text else type(e).__name__}). "
              "Resume from the last checkpoint with --resume.", file=sys.stderr)
        return 3
    except (configs.ConfigError, DataError, NonFiniteError, FileNotFoundError) as e:
        kind = {configs.ConfigError: "config error", DataError: "data error",
                NonFiniteError: "training stopped"}.get(type(e), "error")
        print(f"mortal: {kind}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mortal: interrupted; resume with --resume (the last checkpoint is intact)",
              file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
