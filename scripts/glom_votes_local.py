"""Local versions of a vote level (mortal.arch.glom_votes): no gradient crosses the rounds of
attention or another column's vote. A study; both versions failed (docs/glom.md, sixteenth
session).

The field draws the target (the pixels, or a saved part level's islands) from the
stop-gradient islands and learns from that alone. The vote net learns by one of:
  select  regress (centre / reach^2 squared error, code cross-entropy) onto the island that
          explains the column best: among 24 random foreground columns' islands of the image
          and the column's own, a softmin over the field's drawing error / TAU
  st      the column's own drawing error, its island taken as its own vote (straight
          through), plus TAU x the squared distance to its settled island (the consensus)
plus DENSITY x the vote density with the other columns' votes detached.

    python scripts/glom_votes_local.py AMBIGUITY PARTS.pt|- DENSITY LAM TAU STEPS SEED \
        RECORDS.jsonl select|st

Prints a row per 250 steps, then appends one JSON line (settings and
glom_parts_votes.evaluate's measures) to RECORDS.jsonl and saves the level beside it.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

from mortal.arch.glom_votes import PATCH, VoteLevel, patches, settle
from mortal.data.parts import column_ids, make_parts
from mortal.recipes import glom_parts as gp
from mortal.recipes import glom_parts_votes as R
from mortal.rules import glom_votes as rule

amb, below_path, dens, lam, tau, steps, seed, out, how = sys.argv[1:10]
amb, dens, lam, tau = float(amb), float(dens), float(lam), float(tau)
steps, seed = int(steps), int(seed)
C = 24
torch.set_num_threads(1)
torch.manual_seed(seed)
below = None
if below_path != "-":
    below = VoteLevel((48, 64))
    s = torch.load(below_path)
    below.vote.load_state_dict(s["vote"])
    below.field.load_state_dict(s["field"])
    below.requires_grad_(False)
level = VoteLevel((48, 64), draws=16 if below is None else 6)
opt = torch.optim.Adam(level.parameters(), 1e-3)


def density_local(v, fg, cent, sigma, lam):
    off2 = (v - cent).pow(2).sum(-1)
    d2 = (v.unsqueeze(2) - v.detach().unsqueeze(1)).pow(2).sum(-1)
    eye = torch.eye(v.shape[1], dtype=torch.bool)
    pair = fg.unsqueeze(1) & fg.unsqueeze(2) & ~eye
    dd = torch.logsumexp((-d2 / (2 * sigma**2)).masked_fill(~pair, -1e9), 2)
    return ((lam * off2 - dd) * fg).sum() / fg.sum()


def step_loss(images, fg, g):
    B, N = fg.shape
    st = rule.below_state(below, images, fg)
    target = None if st is None else below.summary(*st)
    tgt = patches(images) if target is None else target
    out = level.vote(images).flatten(2).transpose(1, 2)
    v = level.centres + level.reach * torch.tanh(out[..., :2])
    logits = out[..., 2:]
    q = torch.softmax(logits, -1)
    with torch.no_grad():
        cs, qs = settle(v.detach(), q.detach(), fg, level.rounds, level.sigma, level.beta)
    draw = rule.draw_loss(level, cs, qs, fg, images, target)
    with torch.no_grad():
        # candidates: C random foreground columns per image (their islands), plus own
        w = fg.float() + 1e-6
        idx = torch.multinomial(w, C, replacement=True, generator=g)  # B, C
        idx = torch.cat(
            [idx.unsqueeze(1).expand(B, N, C), torch.arange(N).view(1, N, 1).expand(B, N, 1)], 2
        )  # B,N,C+1
        cc = torch.gather(
            cs.unsqueeze(1).expand(B, N, N, 2), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 2)
        )
        qc = torch.gather(
            qs.unsqueeze(1).expand(B, N, N, qs.shape[-1]),
            2,
            idx.unsqueeze(-1).expand(-1, -1, -1, qs.shape[-1]),
        )
        rel = (level.centres.view(1, N, 1, 2) - cc) / level.reach
        drawn = level.field(torch.cat([qc, rel], -1))  # B,N,C+1,D
        t = tgt.unsqueeze(2).expand_as(drawn)
        if target is None:
            err = F.binary_cross_entropy_with_logits(drawn, t, reduction="none").mean(-1)
        else:
            err = (drawn - t).pow(2).mean(-1)
        r = torch.softmax(-err / tau, -1)  # B,N,C+1
        tc = (r.unsqueeze(-1) * cc).sum(2)
        tq = (r.unsqueeze(-1) * qc).sum(2)
    if how == "select":
        vote = (v - tc).pow(2).sum(-1) / level.reach**2 - (tq * F.log_softmax(logits, -1)).sum(-1)
        vote = (vote * fg).sum() / fg.sum()
    else:  # 'st': each column's own drawing error, its island taken as its own vote (straight
        # through: the gradient reaches the column's vote, not the other columns' nor the rounds)
        c_st, q_st = v + (cs - v).detach(), q + (qs - q).detach()
        drawn = level.field.requires_grad_(False)(
            torch.cat([q_st, (level.centres - c_st) / level.reach], -1)
        )
        level.field.requires_grad_(True)
        vote = (
            F.binary_cross_entropy_with_logits(drawn[fg], tgt[fg])
            if target is None
            else F.mse_loss(drawn[fg], tgt[fg])
        )
        if tau > 0:  # and towards the consensus
            vote = vote + tau * ((v - cs).pow(2).sum(-1)[fg].mean() / level.reach**2)
    dd = density_local(v, fg, level.centres, 2.0, lam)
    return {"loss": draw + vote + dens * dd, "draw": draw, "vote": vote, "density": dd}


g = torch.Generator().manual_seed(seed)
t0 = time.time()
sums = {}
for step in range(steps):
    b = make_parts(32, 1000 + step, amb, layout="touching")
    fg = column_ids(b.object_ids, PATCH) > 0
    terms = step_loss(b.images, fg, g)
    opt.zero_grad()
    terms["loss"].backward()
    opt.step()
    for k, v in terms.items():
        sums[k] = sums.get(k, 0) + float(v.detach())
    if (step + 1) % 250 == 0:
        print(
            json.dumps(
                {
                    "step": step + 1,
                    "s": round(time.time() - t0),
                    **{k: round(v / 250, 4) for k, v in sums.items()},
                }
            ),
            flush=True,
        )
        sums = {}
cfg = R.Config()
k = cfg.ambiguities.index(amb)
levels = [level.eval()] if below is None else [below.eval(), level.eval()]
ev = R.evaluate(levels, cfg, amb, gp.eval_seed(gp.Config(), k), torch.device("cpu"))
ev.pop("pictures")
rec = {
    "local": how,
    "below": below_path,
    "ambiguity": amb,
    "density": dens,
    "lam": lam,
    "tau": tau,
    "seed": seed,
    "steps": steps,
    "seconds": round(time.time() - t0, 1),
    **ev,
}
print(json.dumps(rec))
open(out, "a").write(json.dumps(rec) + "\n")
torch.save(
    {"vote": level.vote.state_dict(), "field": level.field.state_dict()},
    out.replace(".jsonl", f"_{how}_{amb}_{dens}_{lam}_{tau}_{seed}.pt"),
)
