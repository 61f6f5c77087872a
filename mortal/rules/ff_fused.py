"""FF's step for a Dense ReLU layer in fewer memory passes: the same maths as `FFNet.train_step`
(mortal/rules/ff.py, which is the reference and handles every other case), fused.

On a CPU whose matrix unit (AMX) makes the matmuls cheap, what is left of an FF step is memory
traffic: the bias and ReLU after the forward matmul, the goodness and peer statistics, the
gradient d loss/d h, the next layer's normalised input, the fp32 gradient for the optimiser and
the bf16 copy of the updated weight. Eagerly each is one or more passes over a 2000 x N
activity or a 2000 x 2000 weight; here the first two are functions of one pass each, which
`torch.compile` turns into single loops:

  forward   z = W x^T (matmul)         -> h = relu(z + b), goodness (sum of squares) per example,
                                          the positive examples' mean activity per unit
  backward  dh = 2 sign dL/dg h + peer  -> dh (bf16), bias gradient, normalised next input
            dW = dh x (matmul)
  update    torch's fused Adam on the fp32 master weight, then the bf16 copy the next forward
            uses; the state is torch.optim.Adam's own (exp_avg, exp_avg_sq, step), so
            checkpoints are the same whichever path ran.

Activities are feature-major: (units, N) matrices, positives in the first n columns.

Supervised FF's positive and negative copies of an image differ only in the label pixels, so
the first layer computes the image's part once for both (`first_layer_step`): the image half
of its forward and weight-gradient matmuls is done on n columns instead of 2n, exactly (up to
rounding), which saves about 6 % of the FLOPs of the paper's 4x2000 net.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from mortal.arch.dense import Dense
from mortal.loop import DTYPES
from mortal.rules import ff  # ff imports this module too; only its functions are used here


def post_forward(z: torch.Tensor, b: torch.Tensor, n: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = relu(z + b) for z (units, N); each example's sum of squares (N,) and each unit's mean
    over the first n examples (units,), both fp32 (the mean is empty when n = 0)."""
    h = torch.relu(z + b[:, None].to(z.dtype))
    hf = h.float()
    return h, (hf * hf).sum(0), hf[:, :n].mean(1)


def pre_weight_grad(h: torch.Tensor, c: torch.Tensor, peer: torch.Tensor, n: int,
                    scale: torch.Tensor, straight_through: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dz = c * h (+ peer on the first n examples), masked by the ReLU's slope unless
    straight-through; returns dz in h's dtype, the bias gradient dz.sum(1) (fp32) and the next
    layer's input h * scale (normalised), all from one read of h."""
    hf = h.float()
    pos = (torch.arange(h.shape[1], device=h.device) < n).to(torch.float32)
    dz = hf * c[None, :] + peer[:, None] * pos[None, :]
    if not straight_through:
        dz = torch.where(hf > 0, dz, torch.zeros_like(dz))
    return dz.to(h.dtype), dz.sum(1), (hf * scale[None, :]).to(h.dtype)


def post_forward_shared(u: torch.Tensor, lab: torch.Tensor, s: torch.Tensor, b: torch.Tensor,
                        n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`post_forward` for a first layer whose n positive and n negative inputs share their
    image part: z_j = s_j (u_j + lab_j), u (units, n) the shared part's matmul (the same for
    column j and j + n), lab (units, 2n) the label part's, s (2n,) each input's normalising
    scale."""
    uf = u.float()
    zp = (uf + lab[:, :n].float()) * s[None, :n]
    zn = (uf + lab[:, n:].float()) * s[None, n:]
    bf = b.float()[:, None]
    hp, hn = torch.relu(zp + bf), torch.relu(zn + bf)
    h = torch.cat([hp, hn], 1).to(u.dtype)
    hf = h.float()
    return h, (hf * hf).sum(0), hf[:, :n].mean(1)


def pre_weight_grad_shared(h: torch.Tensor, c: torch.Tensor, peer: torch.Tensor, n: int,
                           scale: torch.Tensor, s: torch.Tensor, straight_through: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pre_weight_grad` for the shared first layer: besides the bias gradient and the next
    input, dz scaled by each input's normalising scale s (units, 2n), for the label part's
    weight gradient, and that summed over each positive and its negative (units, n), for the
    shared image part's."""
    hf = h.float()
    pos = (torch.arange(h.shape[1], device=h.device) < n).to(torch.float32)
    dz = hf * c[None, :] + peer[:, None] * pos[None, :]
    if not straight_through:
        dz = torch.where(hf > 0, dz, torch.zeros_like(dz))
    dzs = dz * s[None, :]
    return (dzs.to(h.dtype), (dzs[:, :n] + dzs[:, n:]).to(h.dtype), dz.sum(1),
            (hf * scale[None, :]).to(h.dtype))


KERNELS: dict[str, Callable] = {"post": post_forward, "pre": pre_weight_grad,
                                "post_shared": post_forward_shared,
                                "pre_shared": pre_weight_grad_shared}
_compiled: dict[str, Callable] = {}
_failed = False


def kernel(name: str, compiled: bool) -> Callable:
    """The named kernel, compiled by torch.compile when asked and possible (a failure to
    compile, e.g. no C++ compiler, warns once and falls back to the plain function)."""
    if not compiled or _failed:
        return KERNELS[name]
    if name not in _compiled:
        _compiled[name] = torch.compile(KERNELS[name], dynamic=False)
    return _compiled[name]


def call(name: str, compiled: bool, *args, **kwargs):
    """Run a kernel; if its compiled form fails, fall back to plain PyTorch for the process."""
    global _failed
    try:
        return kernel(name, compiled)(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any compiler failure: same maths, eagerly
        if not compiled or _failed:
            raise
        _failed = True
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); FF runs its fused "
                      "step without compiling", stacklevel=2)
        return KERNELS[name](*args, **kwargs)


def supports(layer: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             feature_major: bool | None = None) -> bool:
    """Whether the fused step applies: a plain Dense ReLU layer on a CPU, trained by Adam, its
    input feature-major (or, for the shared first layer, about to be made so)."""
    from mortal.arch.dense import feature_major_view

    return (type(layer) is Dense and layer.act_name in ("relu", "relu_st")
            and type(opt) is torch.optim.Adam and not opt.param_groups[0]["amsgrad"]
            and x.device.type == "cpu"
            and (feature_major_view(x) if feature_major is None else feature_major))


class DenseState:
    """Per-layer buffers of the fused step: the compute-dtype copy of the weight, kept up to
    date by the update (made from the master weight when missing or stale)."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.key: tuple | None = None

    def weight(self, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (w.data_ptr(), w._version, dtype)
        if self.low is None or self.key != key:
            self.low = w.detach().to(dtype)
            self.key = key
        return self.low

    def updated(self, w: torch.Tensor) -> None:
        """The update wrote `low` from w (fused Adam does not bump w's version counter)."""
        self.key = (w.data_ptr(), w._version, self.low.dtype)


def adam_state(opt: torch.optim.Adam, p: torch.Tensor) -> dict:
    """torch.optim.Adam's state for p, created as Adam would on its first step."""
    st = opt.state[p]
    if not st:
        st["step"] = torch.tensor(0.0)
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return st


def adam_step(opt: torch.optim.Adam, p: torch.Tensor, g: torch.Tensor,
              low: torch.Tensor | None) -> None:
    """One Adam step of parameter p (in opt's only param group) from gradient g by torch's fused
    kernel (faster here than a compiled one: 3.8 against 5.4 ms for 2000 x 2000, copy included),
    then p copied into `low`, the compute-dtype weight the next forward uses."""
    group = opt.param_groups[0]
    st = adam_state(opt, p)
    st["step"] += 1  # as torch.optim.Adam does before its fused kernel, which reads it
    beta1, beta2 = group["betas"]
    torch._fused_adam_([p.data], [g.float()], [st["exp_avg"]], [st["exp_avg_sq"]], [],
                       [st["step"]], lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"],
                       amsgrad=False, maximize=False)
    if low is not None:
        low.copy_(p.data)


def loss_gradient(net, i: int, h: torch.Tensor, ss: torch.Tensor, pm: torch.Tensor,
                  n: int, n_pos: int, phase: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor]:
    """Layer i's loss from its activity h (units, N), the columns' sums of squares ss and the
    first n_pos columns' mean per unit pm (peer normalisation when n_pos > 0), and what the
    backward pass needs: (h as the (N, units) view, goodness, loss, c = d loss / d ss per
    column times 2 sign, the peer term per unit, the next input's normalising scale)."""
    sign = net.sign_of_sum_squares
    g = (sign * ss).requires_grad_()
    pm = pm.requires_grad_() if n_pos else None
    hv = h.t()  # the (N, units) view the rule's objective sees
    loss, total = net._objective(g, pm, hv, n, phase, i)
    grads = torch.autograd.grad(total, [g] if pm is None else [g, pm])
    with torch.no_grad():
        c = (2.0 * sign) * grads[0]
        peer = grads[1] / n_pos if pm is not None else torch.zeros(h.shape[0])
        scale = ff.rms_scale(ss, h.shape[0])
    return hv, g, loss, c, peer, scale


@torch.no_grad()
def apply_update(layer: torch.nn.Module, opt: torch.optim.Adam, state: DenseState,
                 gw: torch.Tensor, gb: torch.Tensor) -> None:
    """Adam on the layer's weight (then its compute-dtype copy) and bias, and the layer's own
    projection of its weights if it has one."""
    w, b = layer.linear.weight, layer.linear.bias
    adam_step(opt, w, gw, state.low)
    state.updated(w)
    adam_step(opt, b, gb, None)
    if hasattr(layer, "constrain_"):
        layer.constrain_()


def layer_step(net, i: int, x: torch.Tensor, n: int, phase: str, compiled: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer i's whole FF step (forward, loss, gradient, Adam) on feature-major input x (N, D)
    whose first n rows are positives. Returns (h, goodness, loss, next input), h and the next
    input as feature-major (N, units) views."""
    layer, opt = net.layers[i], net.optimizers[i]
    w, b = layer.linear.weight, layer.linear.bias
    dtype = x.dtype
    states = net.__dict__.setdefault("_fused_states", {})
    state = states.setdefault(i, DenseState())
    xt = x.t()  # (D, N) storage
    with torch.no_grad():
        z = torch.mm(state.weight(w, dtype), xt)
        peer_on = net.rule.peer_weight > 0 and phase != "neg"
        n_pos = (x.shape[0] if phase == "pos" else n) if peer_on else 0
        h, ss, pm = call("post", compiled, z, b.detach(), n_pos)
    hv, g, loss, c, peer, scale = loss_gradient(net, i, h, ss, pm, n, n_pos, phase)
    with torch.no_grad():
        dz, gb, x_next = call("pre", compiled, h, c, peer, n_pos, scale,
                              layer.act_name == "relu_st")
        apply_update(layer, opt, state, torch.mm(dz, xt.t()), gb)
    return hv, g, loss, x_next.t()


def first_layer_step(net, x_pos: torch.Tensor, x_neg: torch.Tensor, k: int, compiled: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer 0's whole FF step for positives x_pos and negatives x_neg (N, D, batch-major, not
    yet normalised) that differ only in their first k features (the embedded label): the same
    maths as `layer_step` on the normalised, concatenated batch, with the image part of both
    matmuls computed once for each pair. Returns what `layer_step` returns."""
    layer, opt = net.layers[0], net.optimizers[0]
    w, b = layer.linear.weight, layer.linear.bias
    dtype = DTYPES[net.rule.dtype]
    state = net.__dict__.setdefault("_fused_states", {}).setdefault(0, DenseState())
    n, d = x_pos.shape
    with torch.no_grad():
        rest = x_pos[:, k:]
        labels = torch.cat([x_pos[:, :k], x_neg[:, :k]])  # (2n, k)
        ss_rest = rest.float().square().sum(1)
        ss = torch.cat([ss_rest, ss_rest]) + labels.float().square().sum(1)
        s = ff.rms_scale(ss, d)  # `normalise`'s scale of each input
        # (D - k, n) storage, like every feature-major input: one converting copy
        rest_t = torch.empty((d - k, n), dtype=dtype, device=rest.device).copy_(rest.t())
        labels_t = labels.t().to(dtype).contiguous()  # (k, 2n)
        low = state.weight(w, dtype)
        u = torch.mm(low[:, k:], rest_t)
        lab = torch.mm(low[:, :k], labels_t)
        peer_on = net.rule.peer_weight > 0
        n_pos = n if peer_on else 0
        h, ss_h, pm = call("post_shared", compiled, u, lab, s, b.detach(), n)
    hv, g, loss, c, peer, scale = loss_gradient(net, 0, h, ss_h, pm, n, n_pos, "both")
    with torch.no_grad():
        dzs, dz_pairs, gb, x_next = call("pre_shared", compiled, h, c, peer, n, scale, s,
                                         layer.act_name == "relu_st")
        gw = torch.empty_like(w)
        gw[:, k:] = torch.mm(dz_pairs, rest_t.t())
        gw[:, :k] = torch.mm(dzs, labels_t.t())
        apply_update(layer, opt, state, gw, gb)
    return hv, g, loss, x_next.t()
