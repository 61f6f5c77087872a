"""Speed of GLOM iterations, as JSON: iterations per second at a batch size, as a fraction of
the bf16 matmul peak measured in the same run.

    python benchmarks/glom.py [--recipe glom-parts|glom-mnist] [--batch-size 32] [--steps 10]

Two timings on the recipe's net: inference iterations (model.step under no_grad) and the
mode=local training step (every net's forward and backward at every iteration). FLOPs are
counted from the matmuls: attention 2 * 2 * B L N^2 D (similarities and the weighted
average), each MLP 2 * B N (d_in * hidden + hidden * d_out) per net; a backward pass doubles
the MLPs' count (weight gradients only: their inputs are detached), and the InfoNCE logits add
2 * B^2 N D per level and target (forward) plus twice that backward.
"""

from __future__ import annotations

import argparse
import json

import torch

from mortal import config as configs
from mortal.arch.glom import Glom
from mortal.bench import gemm_peak, seconds_per_step
from mortal.loop import autocast, make_optimizer, resolve_dtype
from mortal.recipes import get
from mortal.recipes.glom_parts import rule_of, spec_of
from mortal.rules import glom as rule_mod
from mortal.runs import environment

IMAGES = {"glom-parts": (1, 48, 64), "glom-mnist": (1, 28, 28)}


def iteration_flops(model: Glom, b: int) -> dict[str, float]:
    """FLOPs of one iteration's matmuls for a batch of b images: attention and MLPs."""
    s = model.spec
    n, d, h, levels = s.n_columns, s.dim, s.hidden, s.n_levels
    attention = 2 * 2 * b * levels * n * n * d
    d0 = model.bottom0.w1.shape[1]
    mlp = 2 * b * n * (d0 * h + h * d)  # level 0's bottom-up net
    mlp += 2 * (levels - 1) * 2 * b * n * (d * h + h * d)  # bottom-up and top-down nets
    return {"attention": attention, "mlp": mlp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", default="glom-parts", choices=sorted(IMAGES))
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)  # auto: bf16 where the matmul unit has it
    torch.set_num_threads(args.threads)
    recipe = get(args.recipe)
    sets = {"dtype": args.dtype}
    if args.batch_size:
        sets["batch_size"] = str(args.batch_size)
    cfg = configs.build(recipe.config, sets)
    torch.manual_seed(0)
    b = cfg.batch_size
    peak = gemm_peak(dtypes=(args.dtype,), seconds=0.5)["peak_gflops"][args.dtype]
    model = Glom(spec_of(cfg, IMAGES[args.recipe]))
    x = torch.rand(b, *IMAGES[args.recipe])
    cols = model.columns(x)
    with torch.no_grad(), autocast(x.device, args.dtype):
        e0 = model.init_state(cols)

    def infer() -> None:
        with torch.no_grad(), autocast(x.device, args.dtype):
            e = e0
            for _ in range(cfg.iterations):
                e = model.step(e, cols)

    infer_s = seconds_per_step(infer, args.steps) / cfg.iterations
    fl = iteration_flops(model, b)
    infer_flops = fl["attention"] + fl["mlp"]

    rule = rule_of(cfg, n_classes=10)
    rule_mod.attach(model, rule)
    opt = make_optimizer("adam", model.parameters(), rule.lr)
    train_s = seconds_per_step(lambda: rule_mod.local_step(model, x, rule, opt),
                               max(2, args.steps // 2))
    s = model.spec
    nce = 2 * b * b * s.n_columns * s.dim * (2 * s.n_levels - 1) * 3
    # views = 2: the step runs both views (2b images), each view's InfoNCE against the other's b
    train_flops = rule.views * cfg.iterations * (fl["attention"] / 2 + 3 * fl["mlp"] + nce)
    env = environment(args.dtype)
    print(json.dumps({
        "benchmark": "glom",
        "recipe": args.recipe,
        "cpu": env["cpu"], "torch": env["torch"], "threads": torch.get_num_threads(),
        "date": env["date"], "dtype": args.dtype,
        "batch_size": b, "columns": s.n_columns, "levels": s.n_levels, "dim": s.dim,
        "hidden": s.hidden, "iterations_per_step": cfg.iterations, "views": rule.views,
        "peak_gflops": peak,
        "inference_iterations_per_second": round(1 / infer_s, 2),
        "inference_images_iterations_per_second": round(b / infer_s, 1),
        "inference_gflops": round(infer_flops / infer_s / 1e9, 2),
        "inference_fraction_of_peak": round(infer_flops / infer_s / 1e9 / peak, 3),
        "local_train_steps_per_second": round(1 / train_s, 3),
        "local_train_gflops": round(train_flops / train_s / 1e9, 2),
        "local_train_fraction_of_peak": round(train_flops / train_s / 1e9 / peak, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
