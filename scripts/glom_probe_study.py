"""Is the glom-mnist gap in the probe? Re-probe a finished run's top level several ways.

    python scripts/glom_probe_study.py --run RUN_DIR [--iterations 6] [--lbfgs]

Loads the run's checkpoint, computes the top-level embeddings of all 60,000 training and
10,000 test images after `--iterations` GLOM iterations (the recipe's features), and trains
linear probes on them: the recipe's own (Adam on bf16 features, 100 epochs, lr 1e-2), Adam on
standardised fp32 features (lr 1e-3 / 3e-3, weight decay 0 / 1e-4) and, with --lbfgs, a
full-batch L-BFGS softmax with an L2 penalty. One JSON line per probe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mortal.arch.glom import Glom
from mortal.config import build
from mortal.recipes.common import load_split
from mortal.recipes.glom_mnist import Config, top_features
from mortal.recipes.glom_parts import spec_of
from mortal.rules import ff
from mortal.runs import checkpoint


def lbfgs_softmax(x: torch.Tensor, y: torch.Tensor, l2: float, n_classes: int = 10
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear softmax fitted on the whole of (x, y) by L-BFGS, with an L2 penalty l2 |W|^2."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished glom-mnist run directory")
    ap.add_argument("--iterations", type=int, default=6, help="GLOM iterations for the features")
    ap.add_argument("--lbfgs", action="store_true", help="also full-batch L-BFGS probes (slow)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    keys = json.loads((run / "config.json").read_text())["config"]
    cfg = build(Config, keys | {"eval_iterations": args.iterations})
    data = load_split(cfg.dataset, cfg.data_root, torch.device("cpu"), 0)
    model = Glom(spec_of(cfg, (1, 28, 28)))
    model.load_state_dict(checkpoint.load(run / "checkpoint.safetensors")["state"]["model"])
    model.eval()
    t0 = time.perf_counter()
    ft, fe = top_features(model, data.x_train, cfg), top_features(model, data.x_test, cfg)
    yt, ye = data.y_train, data.y_test
    seconds = time.perf_counter() - t0

    def report(probe: str, pred_test: torch.Tensor, pred_train: torch.Tensor, t: float) -> None:
        print(json.dumps({"run": str(run), "iterations": args.iterations, "probe": probe,
                          "test_accuracy_pct": round(100 - ff.error_pct(pred_test, ye), 2),
                          "train_error_pct": round(ff.error_pct(pred_train, yt), 3),
                          "probe_seconds": round(time.perf_counter() - t, 1),
                          "feature_seconds": round(seconds, 1)}), flush=True)

    t = time.perf_counter()
    head = ff.train_softmax(ft, yt, 10, epochs=cfg.probe_epochs, lr=cfg.probe_lr,
                            batch_size=1000, weight_decay=cfg.probe_weight_decay, seed=cfg.seed)
    report("recipe (Adam, bf16 features)", ff.softmax_predict(head, fe),
           ff.softmax_predict(head, ft), t)
    mu, sd = ft.float().mean(0), ft.float().std(0) + 1e-3
    zt, ze = (ft.float() - mu) / sd, (fe.float() - mu) / sd
    for lr in (1e-3, 3e-3):
        for wd in (0.0, 1e-4):
            t = time.perf_counter()
            head = ff.train_softmax(zt, yt, 10, epochs=100, lr=lr, batch_size=1000,
                                    weight_decay=wd, seed=cfg.seed)
            report(f"standardised fp32, Adam lr {lr} wd {wd}", ff.softmax_predict(head, ze),
                   ff.softmax_predict(head, zt), t)
    for l2 in (1e-4, 1e-3) if args.lbfgs else ():
        t = time.perf_counter()
        w, b = lbfgs_softmax(zt, yt, l2)
        report(f"standardised fp32, L-BFGS, L2 {l2}", (ze @ w + b).argmax(1),
               (zt @ w + b).argmax(1), t)


if __name__ == "__main__":
    main()
