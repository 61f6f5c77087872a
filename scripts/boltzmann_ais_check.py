"""Checks of an rbm-mnist model's AIS log-likelihood: is log Z (and so the test log-likelihood)
biased? Loads the final checkpoint of a run, rebuilds the recipe's binarised data, and runs the
checks named by --parts, appending each result to OUT/results.json as it finishes:

  ais_ref      AIS as the recipe ran it (same seed: must reproduce the run's log Z)
  train_bound  sure lower bound on log Z from the distinct training images
  chains       long Gibbs chains from noise and from test images: the sure lower bound on log Z
               from every state they visit, and their free energies
  ais_uniform  AIS from a uniform base (visible biases 0) instead of the base rate
  raise        RAISE (reverse annealing from test images; errs low) against AIS on those images
  ais_fine     AIS with a schedule --fine times finer
  ais_many     AIS with --many runs

    python scripts/boltzmann_ais_check.py --run /work/runs/rbm-mnist-cd1 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mortal.recipes import rbm_mnist
from mortal.rules import boltzmann as bz
from mortal.runs import checkpoint as ckpt

PARTS = ("ais_ref", "train_bound", "chains", "ais_uniform", "raise", "ais_fine", "ais_many")


def load(run: Path) -> tuple[bz.RBM, rbm_mnist.Config]:
    """The RBM of a finished rbm-mnist run (its last checkpoint) and the run's config."""
    cfg_json = json.loads((run / "config.json").read_text())["config"]
    fields = rbm_mnist.Config.__dataclass_fields__
    cfg = rbm_mnist.Config(**{k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in cfg_json.items() if k in fields})
    saved = ckpt.load(run / "checkpoint.safetensors")
    if saved["epoch"] != cfg.epochs:
        raise SystemExit(f"{run}: checkpoint after epoch {saved['epoch']}, not {cfg.epochs}")
    rbm = bz.RBM.init(784, cfg.n_hidden, 0).load(saved["state"]["rbm"])
    return rbm, cfg


def ais_row(rbm: bz.RBM, base_b: torch.Tensor, betas: torch.Tensor, runs: int, seed: int,
            x_test: torch.Tensor) -> dict[str, Any]:
    """log Z by AIS with its +-3 s.e. interval, and the test log-likelihood it gives."""
    t0 = time.perf_counter()
    res = bz.ais_log_z(rbm, base_b, betas, runs, seed)
    lw = res.log_w
    return {"log_z": res.log_z, "log_z_interval_3se": [res.log_z_low, res.log_z_high],
            "test_log_likelihood_nats": bz.mean_log_prob(rbm, x_test, res.log_z),
            "runs": runs, "intermediate": len(betas) - 1, "seed": seed,
            "log_w_spread": float(lw.max() - lw.min()),
            "largest_weight_share": float(torch.softmax(lw, 0).max()),
            # a sure bound: every state's -F(v) is at most log Z
            "final_states_max_neg_free_energy": float((-bz.free_energy(rbm, res.v)).max()),
            "final_states_log_z_lower_bound": bz.log_z_lower_bound(rbm, res.v),
            "seconds": round(time.perf_counter() - t0, 1)}


def gibbs_states(rbm: bz.RBM, v: torch.Tensor, sweeps: int, every: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run block-Gibbs chains from v; returns every `every`-th sweep's states stacked, and the
    final states."""
    g = torch.Generator().manual_seed(seed)
    chain = bz.GibbsChain(v.clone())
    kept = []
    for _ in range(sweeps // every):
        chain.run(rbm, every, g)
        kept.append(chain.v.clone())
    return torch.cat(kept), chain.v


def main() -> None:
    """Run the chosen checks and write their results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--fine", type=int, default=4)
    ap.add_argument("--raise-images", type=int, default=200)
    ap.add_argument("--chains", type=int, default=500)
    ap.add_argument("--sweeps", type=int, default=5000)
    ap.add_argument("--uniform-starts", action="store_true",
                    help="chains: start from uniform noise instead of base-rate noise and test")
    ap.add_argument("--runs", type=int, default=0, help="AIS runs of ais_uniform (0: recipe's)")
    ap.add_argument("--tag", default="", help="suffix of the result names")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rbm, cfg = load(args.run)
    data = rbm_mnist.binarized(cfg, torch.device("cpu"))
    base_b = bz.base_rate_bias(data.x_train)
    betas = bz.ais_betas(*cfg.ais_betas)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    out["model"] = str(args.run)

    def record(name: str, row: dict[str, Any]) -> None:
        name += args.tag
        out[name] = row
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(name, json.dumps(row), flush=True)

    neg_f_test = -bz.free_energy(rbm, data.x_test).double()
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        if part == "ais_ref":
            record(part, ais_row(rbm, base_b, betas, cfg.ais_runs, cfg.seed, data.x_test))
        elif part == "train_bound":
            lb = bz.log_z_lower_bound(rbm, data.x_train)
            record(part, {"log_z_lower_bound": lb, "distinct_images":
                          len(torch.unique(data.x_train, dim=0)),
                          "seconds": round(time.perf_counter() - t0, 1)})
        elif part == "chains":
            g = torch.Generator().manual_seed(11)
            starts = {"noise": bz.bernoulli(torch.sigmoid(base_b).expand(args.chains, -1), g),
                      "test": data.x_test[:args.chains]}
            if args.uniform_starts:  # chains from uniform noise (pixels on with p 1/2)
                starts = {"uniform": bz.bernoulli(torch.full((args.chains, 784), 0.5), g)}
            row: dict[str, Any] = {"chains": args.chains, "sweeps": args.sweeps}
            visited = []
            for name, v in starts.items():
                states, final = gibbs_states(rbm, v, args.sweeps, 100, 12)
                visited.append(states)
                neg_f = -bz.free_energy(rbm, final).double()
                row[f"from_{name}_final_neg_free_energy_quantiles_10_50_90"] = [
                    float(q) for q in torch.quantile(neg_f, torch.tensor([.1, .5, .9]).double())]
                row[f"from_{name}_max_neg_free_energy_visited"] = float(
                    (-bz.free_energy(rbm, states)).max())
            row["log_z_lower_bound_visited"] = bz.log_z_lower_bound(rbm, torch.cat(visited))
            row["test_neg_free_energy_quantiles_10_50_90"] = [
                float(q) for q in torch.quantile(neg_f_test, torch.tensor([.1, .5, .9]).double())]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            record(part, row)
        elif part == "ais_uniform":
            record(part, ais_row(rbm, torch.zeros(784), betas, args.runs or cfg.ais_runs, 3,
                                 data.x_test))
        elif part == "raise":
            v = data.x_test[:args.raise_images]
            lp = bz.raise_log_prob(rbm, base_b, v, betas, n_chains=1, seed=4)
            ref = out.get("ais_ref", {}).get("log_z")
            record(part, {"images": len(v), "chains_per_image": 1,
                          "raise_mean_log_prob": float(lp.mean()),
                          "raise_se": float(lp.std() / len(lp) ** 0.5),
                          "ais_ref_mean_log_prob_same_images":
                              None if ref is None else float(neg_f_test[:len(v)].mean() - ref),
                          "seconds": round(time.perf_counter() - t0, 1)})
        elif part == "ais_fine":
            fine = bz.ais_betas(*(n * args.fine for n in cfg.ais_betas))
            record(part, ais_row(rbm, base_b, fine, cfg.ais_runs, 5, data.x_test))
        elif part == "ais_many":
            record(part, ais_row(rbm, base_b, betas, args.many, 6, data.x_test))
        else:
            raise SystemExit(f"unknown part {part}; choose from {', '.join(PARTS)}")


if __name__ == "__main__":
    main()
