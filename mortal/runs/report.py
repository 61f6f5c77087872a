"""Render a run directory's report.md with matplotlib learning curves (also `mortal report DIR`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mortal.runs import read_metrics

# Which metrics go in which figure: (file stem, title, keys containing any of these words).
_GROUPS = (
    ("curve_error", "error (%)", ("error",)),
    ("curve_loss", "loss", ("loss",)),
    ("curve_goodness", "goodness", ("goodness",)),
    ("curve_accuracy", "per-layer pos/neg accuracy", ("acc",)),
)


def _plot(rows: list[dict[str, Any]], out: Path,
          paper: float | None = None) -> list[tuple[str, str]]:
    """Draw one PNG per metric group against epoch; return (title, filename) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epoch_rows = [r for r in rows if "epoch" in r]
    if not epoch_rows:
        return []
    keys = sorted({k for r in epoch_rows for k, v in r.items() if isinstance(v, (int, float))})
    figures = []
    for stem, title, words in _GROUPS:
        chosen = [k for k in keys if k != "epoch" and any(w in k for w in words)]
        if not chosen:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for k in chosen:
            pts = [(r["epoch"], r[k]) for r in epoch_rows if isinstance(r.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=k)
        if paper is not None and stem == "curve_error":
            ax.axhline(paper, color="k", linestyle="--", linewidth=1, label=f"paper {paper} %")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        if "error" in title and all(r.get(k, 1) > 0 for r in epoch_rows for k in chosen):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png")
        plt.close(fig)
        figures.append((title, f"{stem}.png"))
    return figures


@contextlib.contextmanager
def figure(path: str | Path, xlabel: str, ylabel: str, *, xlog: bool = False,
           ylog: bool = False) -> Iterator[Any]:
    """A matplotlib axis for one result figure; labels, grid, legend and the PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        yield ax
        if xlog:
            ax.set_xscale("log")
        if ylog:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v) + "`"
    return str(v)


def render(run_dir: str | Path) -> Path:
    """(Re)write run_dir/report.md and its PNGs from the files in the run directory."""
    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d} is not a run directory (no config.json)")
    cfg = json.loads((d / "config.json").read_text())
    env = json.loads((d / "env.json").read_text()) if (d / "env.json").exists() else {}
    results_path = d / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = read_metrics(d)
    figures = _plot(rows, d, results.get("paper_test_error_pct"))

    lines = [f"# {cfg.get('recipe', '?')}", ""]
    if results:
        ours, paper = results.get("test_error_pct"), results.get("paper_test_error_pct")
        lines += [
            "| | test error (%) |",
            "|---|---|",
            f"| this run | {_fmt(ours)} |",
            f"| paper | {_fmt(paper) if paper is not None else 'n/a'} |",
            "",
            f"Dataset: {results.get('dataset')}. Epochs: {results.get('epochs')}. "
            f"Training time: {_fmt(results.get('train_seconds'))} s"
            + (f" ({_fmt(eps)} examples/s)." if (eps := results.get("examples_per_second"))
               is not None else "."),
            "",
            "## All results",
            "",
            "| key | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in results.items()]
        lines.append("")
    else:
        lines += ["(no results.json yet: the run has not finished)", ""]
    if (d / "table.md").exists():
        lines += ["## Table", "", (d / "table.md").read_text().rstrip(), ""]
    extra = [f for f in results.get("figures", []) if (d / f).exists()]
    if extra:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in extra] + [""]
    if figures:
        lines += ["## Learning curves", ""]
        lines += [f"![{title}]({name})" for title, name in figures]
        lines.append("")
    lines += ["## Config", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.get("config", {}).items()]
    lines += ["", "## Environment", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in env.items()]
    out = d / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those with a results.json) at or below `paths`; stage folders inside
    a run are not runs of their own."""
    found: set[Path] = set()
    for p in map(Path, paths):
        for r in p.rglob("results.json"):
            if "stages" not in r.relative_to(p).parts:
                found.add(r.parent)
    return sorted(found)


# config keys that do not change what a run measures: where data and devices are, how often
# and how much it reports, and which of two exact implementations computes it
NOT_SETTING = frozenset({
    "data_root", "device", "eval_every", "eval_batch_size", "updown_eval_every", "n_pictures",
    "n_show", "tsne_points", "show_noise", "teacher_cache", "impl", "local_impl", "band_width",
})


def setting_changes(recipe: str, config: dict[str, Any]) -> str:
    """The keys in which a run's config differs from its recipe's current defaults, the
    experiment-defining ones first (the dataset, recipes.common.SETTING_KEYS), then every other
    key except NOT_SETTING, e.g. 'widths=1000x4, epochs=10, loss=pairwise, seed=1'. A key the
    recipe gained after the run counts as what the code did before (`Recipe.past_defaults`);
    paths show their last part."""
    from mortal import config as configs
    from mortal.recipes import get
    from mortal.recipes.common import SETTING_KEYS

    try:
        r = get(recipe.split("/")[0])
        now = configs.to_dict(r.config())
    except (KeyError, ValueError, TypeError):
        return "?"
    config = {**now, **r.before, **config}  # a key added since: what the run's code did

    def plain(v: Any) -> Any:  # JSON gives lists where the dataclass has (nested) tuples
        return [plain(u) for u in v] if isinstance(v, (tuple, list)) else v

    def show(v: Any) -> str:
        if isinstance(v, list) and v and len(set(map(str, v))) == 1 and len(v) > 1:
            return f"{v[0]}x{len(v)}"
        if isinstance(v, str) and "/" in v:
            return v.rstrip("/").rsplit("/", 1)[-1]
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    first = ("dataset", *SETTING_KEYS)
    keys = [k for k in first if k in config] + [k for k in config
                                                if k not in first and k not in NOT_SETTING]
    out = [f"{k}={show(plain(config[k]))}" for k in keys
           if k in now and plain(config[k]) != plain(now[k])]
    return ", ".join(out) or "default"


def summary(paths: list[str | Path]) -> str:
    """A markdown table of every finished run under `paths`: recipe, the paper's number, ours,
    epochs, wall time, machine, date and git revision, read from the run records (the
    generated RESULTS.md)."""
    lines = ["# Results", "",
             "Generated by `mortal results " + " ".join(map(str, paths)) + "` from the run "
             "directories' results.json and env.json; nothing here is typed by hand.", "",
             "The setting column names every key in which a run's config differs from its "
             "recipe's current defaults (the size and length first), so two runs of one "
             "recipe are told apart; keys that only choose where data are, what is reported "
             "or an exact implementation are left out (`runs.report.NOT_SETTING`).", "",
             "| recipe | setting | paper test error (%) | ours (%) | epochs | training time | "
             "machine | date | revision | run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in find_runs(paths):
        r = json.loads((d / "results.json").read_text())
        env = json.loads((d / "env.json").read_text()) if (d / "env.json").exists() else {}
        cfg_path = d / "config.json"
        setting = (setting_changes(str(r.get("recipe")),
                                   json.loads(cfg_path.read_text()).get("config", {}))
                   if cfg_path.exists() else "?")
        paper = r.get("paper_test_error_pct")
        secs = r.get("train_seconds")
        wall = f"{secs / 60:.1f} min" if isinstance(secs, (int, float)) else "?"
        n = env.get('torch_threads', '?')
        machine = f"{env.get('cpu', '?')}, {n} thread{'' if n == 1 else 's'}"
        rev = str(env.get("git_revision") or "?")
        rev = rev[:8] + ("+dirty" if rev.endswith("+dirty") else "")
        lines.append(
            f"| {r.get('recipe')} | {setting} | {_fmt(paper) if paper is not None else 'n/a'} | "
            f"{_fmt(r.get('test_error_pct'))} | {r.get('epochs')} | {wall} | {machine} | "
            f"{str(env.get('date', '?'))[:10]} | {rev} | "
            f"{d} |")
        note = r.get("test_error_note")
        if note:
            lines.append(f"| | | | ({note}) | | | | | | |")
    return "\n".join(lines) + "\n"
