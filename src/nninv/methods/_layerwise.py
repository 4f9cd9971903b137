"""The layer-by-layer backward pass shared by the closed-form methods.

Walking the chain from the output back to the input, the pass keeps either the
exact values of the current vector or an affine constraint ``B v = d`` on it
(``B`` with orthonormal rows). Through a bijective activation exact values are
inverted in closed form; through an affine block exact values become a
constraint, reduced by the block's cached SVD; a Softmax turns exact values
into a constraint with one free direction (the additive constant). Where a
constraint meets an activation (or the input), a *chooser* picks one member:
the minimum-norm one (``pinv``) or the prior's conditional mean (``analytic``).
If the member lies outside a bounded activation's range, Gauss-Newton steps in
the activation's own coordinates move it onto ``{B sigma(u) = d}``, so the
constraint holds exactly and the next inverse is defined.
"""

from __future__ import annotations

__all__ = ["Chooser", "backward_pass"]

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import NNInvError
from ..linalg import factor, gauss_newton_onto, gauss_newton_solve
from ..model.chain import Affine, Chain, Elementwise, Shift
from ..model.outputs import all_finite

#: ``chooser(position, B, d) -> v``: a member of ``{v : B v = d}`` for the vector
#: entering step ``position`` (0 means the model input).
Chooser = Callable[[int, Tensor, Tensor], Tensor]


@functools.lru_cache(maxsize=32)
def _centering_basis(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    P = torch.eye(m, dtype=torch.float64) - 1.0 / m
    return factor(P).Vh.to(device=device, dtype=dtype)


def backward_pass(
    chain: Chain, y: Tensor, choose: Chooser, *, hidden_tol: float, min_norm: bool = False
) -> tuple[Tensor, Tensor, list[str | None], dict]:
    """Invert flat targets ``y`` (N, m) through ``chain``.

    ``min_norm=True`` says that ``choose`` at the input is the minimum-norm member
    ``d @ B``; a first affine block of full row rank then maps its exact values to
    the input by one cached ``pinv(A)`` product instead of a reduction and a choice.

    Returns
    -------
    x : Tensor (N, n)
        Flat inputs.
    ok : Tensor (N,) bool
        False where a step could not be met exactly (target outside an affine
        block's range, or a hidden projection that did not converge).
    reasons : list
        Per sample, why it failed, or None.
    info : dict
        ``"outside_range"`` (largest norm of a target part outside an affine
        block's range) and ``"projection_iterations"``.
    """
    N = y.shape[0]
    dtype, device = y.dtype, y.device
    ok = torch.ones(N, dtype=torch.bool, device=device)
    reasons: list[str | None] = [None] * N
    info: dict = {"outside_range": 0.0, "projection_iterations": 0}
    rtol_out = 1e3 * torch.finfo(dtype).eps

    polish = torch.zeros(N, dtype=torch.bool, device=device)
    first_affine = True
    exact: Tensor | None = y
    B: Tensor | None = None
    d: Tensor | None = None
    for pos in range(len(chain.steps) - 1, -1, -1):
        step = chain.steps[pos]
        if exact is None:
            assert B is not None and d is not None
            if isinstance(step, Affine):
                _, b = step.matrix(torch.float64, device)
                F = step.reduce_after(B)
                d, outside = F.reduce(d - b.to(dtype) @ B.T)
                B = F.Vh
                continue
            v = _choose_member(step, choose(pos + 1, B, d), B, d, hidden_tol, info, polish)
            exact, B, d = v, None, None
        # exact values of this step's output
        if isinstance(step, Elementwise):
            exact = _invert_elementwise(step, exact, polish)
        elif isinstance(step, Shift):
            t = exact if step.log else torch.log(exact)
            B = _centering_basis(t.shape[1], dtype, device)
            d = t @ B.T
            exact = None
        elif isinstance(step, Affine):
            F = step.factor(dtype, device)
            _, b = step.matrix(torch.float64, device)
            c = exact - b.to(dtype)
            if min_norm and pos == 0 and F.rank == F.shape[0]:
                # the input's minimum-norm member in one product, pinv(A) c
                exact = c @ F.pinv_T()
                first_affine = False
                continue
            d, outside = F.reduce(c)
            B = F.Vh
            if F.rank == F.shape[0]:
                first_affine = False
                exact = None
                continue
            far = _far_from_range(c, outside, rtol_out, info)
            if bool(far.any()):
                if first_affine:
                    _fail(
                        ok,
                        reasons,
                        far,
                        f"the target is not in the range of {step.label()} "
                        f"(rank {F.rank} of {F.shape[0]} outputs); the least-squares "
                        "solution is returned",
                    )
                else:
                    polish |= far
            first_affine = False
            exact = None
        else:
            raise NNInvError(
                f"closed-form methods cannot invert {step.label()}: {step.reason}; "
                "use method='optimize'"
            )
    if exact is None:
        assert B is not None and d is not None
        exact = choose(0, B, d)
    if sum(isinstance(s, Affine) for s in chain.steps) > 1:
        # hidden members near a saturated edge can lose precision: check the whole chain
        with torch.no_grad():
            polish |= ~(_pre_residual(chain, exact, y) <= hidden_tol)
    polish &= ok
    info["polished"] = int(polish.sum()) if bool(polish.any()) else 0  # any() is cheaper
    if info["polished"]:
        exact = _polish_marked(chain, exact, y, polish, hidden_tol, info, ok, reasons)
    return exact, ok, reasons, info


def _fail(ok: Tensor, reasons: list[str | None], mask: Tensor, why: str) -> None:
    """Mark the samples in ``mask`` failed, keeping the first reason of each."""
    for i in mask.nonzero().flatten().tolist():
        if reasons[i] is None:
            reasons[i] = why
    ok.logical_and_(~mask)


def _choose_member(
    step: object, v: Tensor, B: Tensor, d: Tensor, hidden_tol: float, info: dict, polish: Tensor
) -> Tensor:
    """Bring the chosen member ``v`` of ``{B v = d}`` into the range of ``step``'s activation.

    Samples whose member cannot be brought there are marked in ``polish``.
    """
    if isinstance(step, Elementwise):
        inside = step.act.in_range(v).all(1)
        if not bool(inside.all()):
            act = step.act
            clipped = _clip_inside(v[~inside], act)
            u, err, it = gauss_newton_onto(
                B, d[~inside], act.reparam, act.reparam_inverse(clipped), tol=hidden_tol
            )
            info["projection_iterations"] = max(info["projection_iterations"], it)
            vv = act.reparam(u)
            vv = torch.where(torch.isfinite(vv) & act.in_range(vv), vv, clipped)
            v = v.clone()
            v[~inside] = vv
            # the member is unreachable inside the range: keep the clipped one and
            # finish the sample by Gauss-Newton on the whole chain (below)
            polish[(~inside).nonzero().flatten()[~(err <= hidden_tol)]] = True
    elif isinstance(step, Shift):
        raise NNInvError(
            f"{step.label()} inside the network: closed-form methods invert Softmax "
            "only as the last layer; use method='optimize'"
        )
    return v


def _invert_elementwise(step: Elementwise, exact: Tensor, polish: Tensor) -> Tensor:
    """Exact values before an activation; non-finite ones are zeroed and marked in ``polish``."""
    exact = step.act.inverse(exact)
    if not all_finite(exact):
        finite = torch.isfinite(exact)
        polish |= ~finite.all(1)
        exact = torch.where(finite, exact, torch.zeros_like(exact))
    return exact


def _far_from_range(c: Tensor, outside: Tensor, rtol_out: float, info: dict) -> Tensor:
    """Samples whose target part outside an affine block's range is above round-off."""
    scale = torch.linalg.vector_norm(c, dim=1).clamp(min=1.0)
    far = outside > rtol_out * scale
    info["outside_range"] = max(info["outside_range"], float(outside.max()))
    return far


def _polish_marked(
    chain: Chain,
    exact: Tensor,
    y: Tensor,
    polish: Tensor,
    hidden_tol: float,
    info: dict,
    ok: Tensor,
    reasons: list[str | None],
) -> Tensor:
    """Gauss-Newton on the whole chain for the samples marked in ``polish``."""
    exact = exact.clone()
    xs, err, it = _polish(chain, exact[polish], y[polish], hidden_tol)
    info["polish_iterations"] = it
    exact[polish] = xs
    bad = torch.zeros(exact.shape[0], dtype=torch.bool, device=exact.device)
    bad[polish.nonzero().flatten()[~(err <= hidden_tol)]] = True
    _fail(
        ok,
        reasons,
        bad,
        "a hidden layer's member was not reachable from the layers before it, and "
        "Gauss-Newton on the whole chain stopped above tolerance",
    )
    return exact


def _pre_target(chain: Chain, y: Tensor) -> tuple[int, Tensor]:
    """Where to measure the residual: before a last elementwise activation, if any."""
    last = chain.steps[-1]
    if isinstance(last, Elementwise):
        return len(chain.steps) - 1, last.act.inverse(y)
    return len(chain.steps), y


def _pre_residual(chain: Chain, x: Tensor, y: Tensor) -> Tensor:
    upto, target = _pre_target(chain, y)
    return (chain.forward_flat(x, upto=upto) - target).abs().amax(1)


def _polish(chain: Chain, x0: Tensor, y: Tensor, tol: float) -> tuple[Tensor, Tensor, int]:
    """Solve ``f(x) = y`` from ``x0`` by Gauss-Newton, before the last activation."""
    upto, target = _pre_target(chain, y)

    def F(v: Tensor) -> Tensor:
        return chain.forward_flat(v, upto=upto)

    x, err, it = gauss_newton_solve(F, x0, target, tol=tol)
    again = ~(err <= tol)
    if bool(again.any()):
        # a saturated start can stall; the origin is a neutral second start
        x2, err2, it2 = gauss_newton_solve(F, torch.zeros_like(x0[again]), target[again], tol=tol)
        better = err2 < err[again]
        idx = again.nonzero().flatten()[better]
        x[idx], err[idx] = x2[better], err2[better]
        it = max(it, it2)
    return x, err, it


def _clip_inside(v: Tensor, act) -> Tensor:
    lo, hi = act.lo, act.hi
    span = (hi - lo) if (abs(lo) != float("inf") and abs(hi) != float("inf")) else 1.0
    margin = 1e-3 * span
    return v.clamp(
        min=lo + margin if lo != float("-inf") else None,
        max=hi - margin if hi != float("inf") else None,
    )
