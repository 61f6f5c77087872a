"""Can a column learn, with no labels, to vote for the centre of its object? (glom-parts study)

GLOM's islands need something that groups the columns of one object apart from those of the
object touching it. This study tries the capsule / Hough idea without labels: a small conv net
(no position input, zero padding) gives every 4x4 patch an offset; its vote is the patch's
centre plus the offset. The loss makes each foreground column's vote dense among the votes of
the other foreground columns of its image (log of a Gaussian kernel density, `sigma` pixels),
plus `lam` times the squared offset (a prior on the size of a group: without it, one image's
votes can all meet at one point). Measured on 96 test images of glom-parts' touching layout:
votes clustered by average linkage at a distance threshold, ARI against the true objects and
parts.

    python scripts/glom_votes.py AMBIGUITY STEPS SIGMA LAM RF [--out DIR]

RF is the net's receptive field in pixels (33 or 17). Prints progress lines, then one JSON
line with the final ARIs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.cluster.hierarchy import fcluster, linkage

from mortal.arch.glom_votes import patch_centres as arch_centres
from mortal.data.parts import column_ids, make_parts
from mortal.rules.glom import adjusted_rand_index
from mortal.rules.glom_votes import vote_density

P, H, W = 4, 48, 64


def make_net(rf: int) -> torch.nn.Module:
    """Patch offsets (B, 2, H/4, W/4) from images; receptive field 33 or 17 pixels."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 5, padding=2, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 5, padding=2, stride=2), torch.nn.ReLU(),
        *([torch.nn.Conv2d(64, 64, 5, padding=2), torch.nn.ReLU()] if rf == 33 else
          [torch.nn.Conv2d(64, 64, 1), torch.nn.ReLU()]),
        torch.nn.Conv2d(64, 2, 1))


def patch_centres() -> torch.Tensor:
    """(N, 2) the (x, y) pixel centre of every patch, row-major."""
    return arch_centres(H, W)


vote_loss = vote_density  # lam |offset|^2 - log of the vote's density among its image's votes


def measure(votes: torch.Tensor, obj: torch.Tensor, part: torch.Tensor,
            thresholds: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Per distance threshold: object ARI, part ARI and clusters per image, averaged."""
    out = {}
    v = votes.numpy()
    for t in thresholds:
        so = sp = nc = 0.0
        for i in range(len(v)):
            fg = obj[i].numpy() > 0
            lab = fcluster(linkage(v[i][fg], "average"), t, "distance")
            so += adjusted_rand_index(lab, obj[i].numpy()[fg])
            sp += adjusted_rand_index(lab, part[i].numpy()[fg])
            nc += lab.max()
        n = len(v)
        out[str(t)] = {"object_ari": round(so / n, 3), "part_ari": round(sp / n, 3),
                       "clusters": round(float(nc) / n, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ambiguity", type=float)
    ap.add_argument("steps", type=int)
    ap.add_argument("sigma", type=float)
    ap.add_argument("lam", type=float)
    ap.add_argument("rf", type=int, choices=(17, 33))
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, cent = make_net(a.rf), patch_centres()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    test = make_parts(96, 999, a.ambiguity, layout="touching")
    obj, part = column_ids(test.object_ids, P), column_ids(test.part_ids, P)

    def votes(img: torch.Tensor) -> torch.Tensor:
        return cent + 4.0 * net(img).flatten(2).transpose(1, 2)

    def test_votes() -> torch.Tensor:
        with torch.no_grad():
            return votes(test.images)

    untrained = measure(test_votes(), obj, part, (2.0, 8.0))
    print("untrained", untrained, flush=True)
    t0 = time.time()
    for step in range(a.steps):
        b = make_parts(64, 1000 + step, a.ambiguity, layout="touching")
        loss = vote_loss(votes(b.images), column_ids(b.object_ids, P) > 0, cent, a.sigma, a.lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == a.steps - 1:
            print(step, round(loss.item(), 3), round(time.time() - t0),
                  measure(test_votes(), obj, part, (2.0, 8.0)), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = f"{a.ambiguity}_{a.lam}_{a.rf}"
    torch.save(net.state_dict(), a.out / f"glom_votes_{tag}.pt")
    print(json.dumps({"ambiguity": a.ambiguity, "steps": a.steps, "sigma": a.sigma, "lam": a.lam,
                      "rf": a.rf, "seconds": round(time.time() - t0, 1),
                      "untrained": untrained,
                      "trained": measure(test_votes(), obj, part, (1.0, 2.0, 4.0, 8.0))}))


if __name__ == "__main__":
    main()
