"""Which imperfection costs FF trained in place its accuracy? Trains mortal-device-mnist's FF
in place on devices that have one imperfection at a time (at strength 1), and deploys the
ideal-trained net onto the same devices, on an MNIST subset. Prints JSON.

    python scripts/device_ablation.py [--train-limit 10000] [--epochs 4] [--widths 500,500,500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch

from mortal.hardware import DeviceDense, Imperfections
from mortal.loop import seed_everything
from mortal.recipes import ff_supervised_mnist as sup
from mortal.recipes import mortal_device_mnist as dev
from mortal.recipes.common import load_split
from mortal.rules import ff
from mortal.runs import Run

OFF = dict(variation=0.0, read_noise=0.0, weight_levels=0, adc_bits=0, gain=0.0, offset=0.0,
           saturation=1e9, stuck=0.0)
ONLY = {  # each device: one imperfection at its default size, the rest off
    "all": {},
    "variation": {"variation": 0.10},
    "read_noise": {"read_noise": 0.05},
    "weight_levels": {"weight_levels": 64},
    "adc": {"adc_bits": 8},
    "gain_offset": {"gain": 0.10, "offset": 0.05},
    "saturation": {"saturation": 6.0},
    "stuck": {"stuck": 0.01},
}


def imperfections(name: str) -> Imperfections:
    """Defaults for 'all'; otherwise everything off but `name`."""
    if name == "all":
        return Imperfections()
    return dataclasses.replace(Imperfections(), **{**OFF, **ONLY[name]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--widths", default="500,500,500")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    cfg = dev.Config(widths=widths, epochs=args.epochs, train_limit=args.train_limit)
    data = load_split("mnist", None, torch.device("cpu"), args.train_limit)
    dims = [784, *widths]
    loop = dataclasses.replace(sup.training(cfg), eval_every=10**9)

    def layers(imp: Imperfections) -> list[DeviceDense]:
        pairs = zip(dims[:-1], dims[1:], strict=True)
        return [DeviceDense(a, b, imp, seed=cfg.device_seed + i, act=cfg.activation,
                            init=cfg.init) for i, (a, b) in enumerate(pairs)]

    def train(imp: Imperfections) -> ff.FFNet:
        seed_everything(cfg.seed)
        net = ff.FFNet(layers(imp), sup.rule(cfg))
        run = Run(tempfile.mkdtemp(), "ablation", {}, quiet=True, record_env=False)
        ff.train(net, data.x_train, data.y_train, data.x_test, data.y_test, loop, run, False)
        return net

    t0 = time.time()
    ideal = train(Imperfections().at(0.0))
    out = {"setting": vars(args), "ideal": dev.ff_error(ideal, data)}
    for name in ONLY:
        imp = imperfections(name)
        seed_everything(cfg.seed)
        deployed = dev.deploy(ideal, ff.FFNet(layers(imp), sup.rule(cfg)))
        out[name] = {"ff-deployed": dev.ff_error(deployed, data),
                     "ff-in-place": dev.ff_error(train(imp), data)}
        print(json.dumps({name: out[name]}), flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
