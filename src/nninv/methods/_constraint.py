"""What ``method="optimize"`` works on: the target as a constraint, the prior as coordinates.

:class:`_ModelFunctions` holds the model in the computation dtype on flat inputs,
with its last invertible activation split off (:func:`_split_last`);
:class:`_Constraint` turns the target into ``c(x) = F(x) - t = 0`` (exact) or
a logit margin ``g(x) >= 0`` (class), in the space where it is best
conditioned. :class:`_Coords` is the prior's Gaussian part as whitened
coordinates ``x = mu_k + L_k u`` (full or low-rank) with ``-log p`` as an
energy in them and the covariance as the projection's metric. Around them sit
the starts (:func:`_initial_u`, :func:`_random_u`), the choice of mixture
components by Laplace evidence (:func:`_choose_components`), the batched
Jacobian (:func:`_jacobian`) and the box (:func:`_clip`). Everything here is
shared by the augmented Lagrangian (:mod:`._augmented_lagrangian`), the
projection (:mod:`.projection`) and the method (:mod:`.optimize`); other
modules reach the projection through :func:`.projection.project`, never these
objects.
"""

from __future__ import annotations

__all__ = ["CLASS_MARGIN"]

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..model.chain import Chain, Elementwise, Shift
from ..model.outputs import output_kind
from ..priors import CombinedPrior, GaussianMixturePrior, GaussianPrior
from ..targets import ClassTarget

#: Margin (in logits) that a class target aims beyond its threshold, so that the
#: measured shortfall is 0 despite rounding.
CLASS_MARGIN = 1e-3


# --- the box ------------------------------------------------------------------------------


def _clip(x: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """``x`` clipped into ``[lo, hi]`` elementwise (unchanged without bounds)."""
    if lo is None or hi is None:
        return x
    return torch.maximum(torch.minimum(x, hi), lo)


# --- the model as constraint functions ----------------------------------------------------


class _ModelFunctions:
    """The model in the computation dtype, on flat inputs, with its head split off.

    ``full(x)`` is the model's output ``(k, m)``; ``head(x)`` the values before a
    last activation, softmax or log-softmax (None if the model cannot be split).
    """

    def __init__(
        self, model: nn.Module, chain: Chain, dtype: torch.dtype, device: torch.device
    ) -> None:
        if model_dtype_device(model, dtype) != (dtype, device):
            model = copy.deepcopy(model).to(dtype=dtype, device=device)
            model.requires_grad_(False)
        self.model = model
        self.shape = chain.input_shape
        self.kind = output_kind(chain)
        self.last = chain.steps[-1] if chain.steps else None
        self._head = _split_last(model, self.last)

    def full(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape)).reshape(x.shape[0], -1)

    @property
    def has_head(self) -> bool:
        return self._head is not None

    def head(self, x: Tensor) -> Tensor:
        assert self._head is not None
        return self._head(x.reshape(x.shape[0], *self.shape)).reshape(x.shape[0], -1)


def _split_last(model: nn.Module, last: Any) -> nn.Module | None:
    """``model`` without its last leaf module, if it is a (nested) Sequential ending in it."""
    if not isinstance(last, (Elementwise, Shift)):
        return None
    want = type(last.layer.module)
    mods: list[nn.Module] = []
    cur = model
    while isinstance(cur, nn.Sequential) and len(cur) > 0:
        children = list(cur.children())
        mods.append(nn.Sequential(*children[:-1]))
        cur = children[-1]
    if not mods or type(cur) is not want:
        return None
    return nn.Sequential(*mods)


@dataclass
class _Constraint:
    """What the target asks of ``x``, in the space where it is best conditioned.

    Exact targets: ``c(x) = F(x) - t = 0`` with ``F`` the head and ``t`` the
    target before the last activation, or the output itself. Class targets:
    ``g(x) >= 0`` with ``g`` the margin of the class in logits.
    """

    kind: str  # "exact" or "class"
    F: Callable[[Tensor], Tensor]
    t: Tensor | None = None
    labels: Tensor | None = None
    threshold: float | None = None  # logit of the confidence, or None
    sigmoid: bool = False
    impossible: str | None = None
    scale: Tensor | None = None

    @property
    def m(self) -> int:
        return int(self.t.shape[1]) if self.t is not None else 1

    @classmethod
    def build(
        cls,
        target: Tensor | ClassTarget,
        fn: _ModelFunctions,
        dtype: torch.dtype,
        device: torch.device,
    ) -> _Constraint:
        """The constraint that ``target`` (exact ``(N, *output_shape)``, or a class) sets."""
        if isinstance(target, ClassTarget):
            return cls._class(target, fn, dtype, device)
        y = target.reshape(target.shape[0], -1).to(dtype)
        last = fn.last
        if fn.has_head and isinstance(last, Elementwise) and last.act.injective:
            t = last.act.inverse(y)
            F = fn.head
        elif fn.has_head and isinstance(last, Shift):
            t = y if last.log else torch.log(y)

            def F(x: Tensor) -> Tensor:
                return torch.log_softmax(fn.head(x), 1)

        else:
            t, F = y, fn.full
        if not bool(torch.isfinite(t).all()):  # an edge value the inverse cannot take
            t, F = y, fn.full
        return cls("exact", F, t=t, scale=t.abs().amax(1).clamp(min=1.0))

    @classmethod
    def _class(
        cls, target: ClassTarget, fn: _ModelFunctions, dtype: torch.dtype, device: torch.device
    ) -> _Constraint:
        kind = fn.kind
        if kind in ("softmax", "logsoftmax", "sigmoid") and fn.has_head:
            F = fn.head
        elif kind == "softmax":

            def F(x: Tensor) -> Tensor:
                return torch.log(fn.full(x))

        elif kind == "sigmoid":

            def F(x: Tensor) -> Tensor:
                return torch.logit(fn.full(x))

        else:
            F = fn.full
        p = target.confidence
        impossible = None
        if p is not None and p >= 1.0:
            impossible = (
                f"confidence {p:g} is not reachable: the {kind if kind != 'logits' else 'softmax'} "
                "of finite logits stays below 1"
            )
            # aim as high as the dtype resolves, and report the sample as unconverged
            p = 1.0 - 64 * torch.finfo(dtype).eps
        threshold = None if p is None else math.log(p) - math.log1p(-p)
        labels = target.labels.to(device)
        return cls(
            "class",
            F,
            labels=labels,
            threshold=threshold,
            sigmoid=kind == "sigmoid",
            impossible=impossible,
        )

    def residual(self, v: Tensor, rows: Tensor) -> Tensor:
        """``c`` (k, m) for exact targets, ``CLASS_MARGIN - g`` (k, 1) for class targets."""
        if self.kind == "exact":
            assert self.t is not None
            return v - self.t[rows]
        return (CLASS_MARGIN - self.margin(v, rows))[:, None]

    def margin(self, z: Tensor, rows: Tensor) -> Tensor:
        """The class margin ``g`` (k,) of logits ``z``: >= 0 when the target is met."""
        assert self.labels is not None
        lab = self.labels[rows][:, None]
        zc = z.gather(1, lab)[:, 0]
        # logits far below the class add nothing but subnormal gradients, which are
        # slow on CPUs: hold them 60 below it
        others = torch.maximum(z, zc[:, None] - 60.0).scatter(1, lab, -math.inf)
        g = zc - others.amax(1)
        if self.threshold is not None:
            if self.sigmoid:
                g = torch.minimum(g, zc - self.threshold)
            else:
                gc = zc - torch.logsumexp(others, 1) - self.threshold
                g = gc if self.threshold >= 0 else torch.minimum(g, gc)
        return g

    def violation(self, r: Tensor) -> Tensor:
        """Per-sample size of the violation from :meth:`residual`."""
        if self.kind == "exact":
            assert self.scale is not None
            return r.abs().amax(1)
        return r[:, 0].clamp(min=0)


# --- coordinates and the prior's energy ---------------------------------------------------


@dataclass
class _Coords:
    """``x = mu_k + L_k u`` per sample (``k`` its component), or ``x = u``.

    ``energy(u, x)`` is ``-log p(x)`` up to a constant per component. In the
    low-rank form (:meth:`low_rank`) the Gaussian part's covariance is replaced
    by ``c_k I + W_k W_k^T`` (its top ``r`` eigen-directions over an isotropic
    rest of the same trace), with ``x = mu_k + sqrt(c_k) u_a + W_k u_b`` and
    ``u = (u_a, u_b)``: an over-complete parametrisation whose ``|u|^2 / 2``,
    minimised over the ``u`` that give one ``x``, is that Gaussian's energy.
    """

    shape: tuple[int, ...]
    mus: Tensor | None = None  # (K, n)
    Ls: Tensor | None = None  # (K, n, n)
    gauss_weight: float = 1.0
    mixture: GaussianMixturePrior | None = None
    extra: list[tuple[float, Any]] = field(default_factory=list)
    comp: Tensor | None = None  # (rows,) component of each row
    prior: Any = None
    Ss: Tensor | None = None  # (K, n, n) covariances
    # low-rank form: W = U diag(sqrt(dl)) (K, n, r), isotropic std sig (K,)
    Us: Tensor | None = None
    Ws: Tensor | None = None
    dl: Tensor | None = None
    sig: Tensor | None = None
    gauss: Any = None  # the prior's Gaussian part

    @classmethod
    def build(
        cls, prior: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> _Coords:
        if prior is None:
            # no prior: the member nearest to 0 (the minimum-norm solution)
            return cls(shape, extra=[(0.5, _HalfSquaredNorm())])
        terms = list(prior.terms) if isinstance(prior, CombinedPrior) else [(1.0, prior)]
        gi = next(
            (
                i
                for i, (_, p) in enumerate(terms)
                if isinstance(p, (GaussianPrior, GaussianMixturePrior))
            ),
            None,
        )
        if gi is None:
            return cls(shape, extra=terms, prior=prior)
        w, g = terms.pop(gi)
        if isinstance(g, GaussianPrior):
            mu, S, L = g._t(dtype, device)
            mus, Ss, Ls = mu[None], S[None], L[None]
            mixture = None
        else:
            _, mus, Ss, Ls = g._t(dtype, device)
            mixture = g
        return cls(shape, mus, Ls, w, mixture, terms, prior=prior, Ss=Ss, gauss=g)

    def low_rank(self, rank: int) -> _Coords:
        """This parametrisation with each covariance cut to ``rank`` directions (see above).

        The eigen-decomposition of the Gaussian part's covariances is computed
        once (float64) and kept with the prior.
        """
        if self.mus is None or self.Ss is None or not 0 < rank < math.prod(self.shape):
            return self
        gauss = self.gauss
        cache = gauss._c.tensors
        key = ("eigh", self.mus.device)
        if key not in cache:
            cov = gauss.covariance[None] if isinstance(gauss, GaussianPrior) else gauss.covariances
            e, V = torch.linalg.eigh(cov.to(self.mus.device, torch.float64))
            cache[key] = (e.flip(-1), V.flip(-1))
        e, V = cache[key]
        n = e.shape[1]
        lam, U = e[:, :rank].clamp(min=0), V[:, :, :rank]
        # the rest as one isotropic variance with the same trace
        c = ((e.sum(1) - lam.sum(1)) / (n - rank)).clamp(min=torch.finfo(torch.float64).tiny)
        dl = (lam - c[:, None]).clamp(min=0)
        dtype = self.mus.dtype
        out = copy.copy(self)
        out.Ls, out.Ss = None, None
        out.Us = U.to(dtype).contiguous()
        out.dl = dl.to(dtype)
        out.Ws = (U * dl.sqrt()[:, None, :]).to(dtype).contiguous()
        out.sig = c.sqrt().to(dtype)
        return out

    @property
    def whitened(self) -> bool:
        return self.mus is not None

    @property
    def n_components(self) -> int:
        return 0 if self.mus is None else int(self.mus.shape[0])

    @property
    def u_dim(self) -> int:
        """Length of ``u``: the input size, plus the rank in the low-rank form."""
        n = math.prod(self.shape)
        return n if self.Ws is None else n + int(self.Ws.shape[2])

    def expand(self, comp: Tensor | None) -> _Coords:
        """A copy whose rows use components ``comp``, sorted (None: component 0 everywhere)."""
        out = copy.copy(self)
        out.comp = comp
        if comp is not None and bool((comp[1:] < comp[:-1]).any()):
            raise AssertionError("rows must be sorted by component")
        return out

    def _slices(self, idx: Tensor | None) -> list[tuple[int, slice]]:
        """``(component, rows)`` for the contiguous runs of rows ``idx`` (all if None)."""
        if self.comp is None:
            return [(0, slice(None))]
        c = self.comp if idx is None else self.comp[idx]
        ks, counts = torch.unique_consecutive(c, return_counts=True)
        out, start = [], 0
        for k, cnt in zip(ks.tolist(), counts.tolist()):
            out.append((k, slice(start, start + cnt)))
            start += cnt
        return out

    def to_x(self, u: Tensor, idx: Tensor | None) -> Tensor:
        if self.mus is None:
            return u
        if self.Ws is not None:
            assert self.sig is not None
            n = math.prod(self.shape)
            parts = [
                torch.addmm(self.mus[k], u[sl, n:], self.Ws[k].T) + self.sig[k] * u[sl, :n]
                for k, sl in self._slices(idx)
            ]
        else:
            assert self.Ls is not None
            parts = [torch.addmm(self.mus[k], u[sl], self.Ls[k].T) for k, sl in self._slices(idx)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def to_u(self, x: Tensor, idx: Tensor | None) -> Tensor:
        """The ``u`` that gives ``x`` (the shortest one in the low-rank form)."""
        if self.mus is None:
            return x.clone()
        u = x.new_empty(x.shape[0], self.u_dim)
        for k, sl in self._slices(idx):
            d = x[sl] - self.mus[k]
            if self.Ws is not None:
                assert self.Us is not None and self.dl is not None and self.sig is not None
                c = self.sig[k].pow(2)
                # Woodbury: (c I + U D U^T)^-1 d = (d - U diag(D / (c + D)) U^T d) / c
                p = d @ self.Us[k]
                w = (d - (p * (self.dl[k] / (c + self.dl[k]))) @ self.Us[k].T) / c
                n = d.shape[1]
                u[sl, :n] = self.sig[k] * w
                u[sl, n:] = w @ self.Ws[k]
            else:
                assert self.Ls is not None
                u[sl] = torch.linalg.solve_triangular(self.Ls[k], d.T, upper=False).T
        return u

    def energy(self, u: Tensor, x: Tensor) -> Tensor:
        """``-log p(x)`` (k,), up to a constant (per component for a mixture)."""
        e = self.energy_x(x)
        if self.mus is not None:
            e = e + (0.5 * self.gauss_weight) * u.pow(2).sum(1)
        return e

    def energy_x(self, x: Tensor) -> Tensor:
        """The terms of ``-log p(x)`` other than the Gaussian part (k,)."""
        e = x.new_zeros(x.shape[0])
        if self.extra:
            xs = x.reshape(x.shape[0], *self.shape)
            for w, p in self.extra:
                e = e - w * p.log_prob(xs).reshape(-1)
        return e

    def pullback(self, gx: Tensor, idx: Tensor | None) -> Tensor:
        """The gradient in ``u`` of a function of ``x = to_x(u)`` with gradient ``gx`` in ``x``."""
        if self.mus is None:
            return gx
        gu = gx.new_empty(gx.shape[0], self.u_dim)
        n = gx.shape[1]
        for k, sl in self._slices(idx):
            if self.Ws is not None:
                assert self.sig is not None
                torch.mul(gx[sl], self.sig[k], out=gu[sl, :n])
                torch.mm(gx[sl], self.Ws[k], out=gu[sl, n:])
            else:
                assert self.Ls is not None
                torch.mm(gx[sl], self.Ls[k], out=gu[sl])
        return gu

    def neg_log_prior(self, x: Tensor) -> Tensor:
        """The exact ``-log p(x)`` of the user's prior (for choosing among candidates)."""
        if self.prior is None:
            return 0.5 * x.pow(2).sum(1)
        with torch.no_grad():
            return -self.prior.log_prob(x.reshape(x.shape[0], *self.shape)).reshape(-1)

    def metric(self, V: Tensor, idx: Tensor | None) -> Tensor:
        """``Sigma_k V`` for ``V`` (k, n, r): the prior's metric for the projection."""
        if self.mus is None:
            return V
        out = torch.empty_like(V)
        n, r = V.shape[1], V.shape[2]
        for k, sl in self._slices(idx):
            # one (n, n) @ (n, rows * r) product reads the covariance once; a broadcast
            # batched product would read it once per row
            Vk = V[sl].transpose(0, 1).reshape(n, -1)
            if self.Ws is not None:
                assert self.sig is not None
                Mk = self.sig[k].pow(2) * Vk + self.Ws[k] @ (self.Ws[k].T @ Vk)
            else:
                assert self.Ss is not None
                Mk = self.Ss[k] @ Vk
            out[sl] = Mk.reshape(n, -1, r).transpose(0, 1)
        return out


class _HalfSquaredNorm:
    def log_prob(self, x: Tensor) -> Tensor:
        return -x.reshape(x.shape[0], -1).pow(2).sum(1)


def _initial_u(
    coords: _Coords,
    x0: Tensor | None,
    rows: Tensor,
    random: Tensor,
    seed: int,
    lo: Tensor | None,
    hi: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    n = math.prod(coords.shape)
    device = rows.device
    total = len(rows)
    if x0 is not None:
        u = coords.to_u(x0[rows], None)
    elif coords.whitened:
        u = torch.zeros(total, n, dtype=dtype, device=device)
        if lo is not None:
            # start from the mean clipped into the box
            x = _clip(coords.to_x(u, None), lo, hi)
            u = coords.to_u(x, None)
    else:
        u = torch.zeros(total, n, dtype=dtype, device=device)
        if lo is not None:
            u = _clip(u, lo, hi)
    if bool(random.any()):
        rest = random.nonzero().flatten()
        sub = coords.expand(coords.comp[rest] if coords.comp is not None else None)
        g = torch.Generator().manual_seed(seed)
        u[rest] = _random_u(sub, len(rest), g, lo, hi, dtype)
    return u


def _random_u(
    coords: _Coords,
    k: int,
    gen: torch.Generator,
    lo: Tensor | None,
    hi: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """``k`` random starts: draws of the Gaussian part (or of N(0, I)), clipped to the box."""
    n = math.prod(coords.shape)
    device = (
        lo.device if lo is not None else (coords.mus.device if coords.mus is not None else None)
    )
    noise = torch.randn(k, n, generator=gen, dtype=torch.float64).to(device, dtype)
    x = _clip(coords.to_x(noise, None), lo, hi)
    return coords.to_u(x, None)


# --- mixture components -------------------------------------------------------------------


def _choose_components(
    coords: _Coords,
    cons: _Constraint,
    N: int,
    n_comp: int,
    lo: Tensor | None,
    hi: Tensor | None,
) -> tuple[Tensor | None, int]:
    """The ``n_comp`` most probable components per sample, (N, n_comp), by Laplace evidence."""
    K = coords.n_components
    if K <= 1:
        return None, 1
    n_comp = min(n_comp, K)
    assert coords.mus is not None and coords.Ls is not None and coords.mixture is not None
    means = _clip(coords.mus, lo, hi)
    logw = torch.log(coords.mixture.weights.to(means))
    if cons.kind == "exact":
        assert cons.t is not None
        v, J = _jacobian(cons.F, means, cons.m)  # (K, m), (K, m, n)
        LtJt = coords.Ls.transpose(1, 2) @ J.transpose(1, 2)  # (K, n, m)
        S = LtJt.transpose(1, 2) @ LtJt  # (K, m, m)
        eye = torch.eye(cons.m, dtype=S.dtype, device=S.device)
        # observation noise: the linearisation's own error, a fraction of the spread
        S = S + (1e-2 * S.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12))[:, None, None] * eye
        Lc = torch.linalg.cholesky(S)
        diff = (cons.t[None] - v[:, None]).transpose(1, 2)  # (K, m, N)
        z = torch.linalg.solve_triangular(Lc, diff, upper=False)
        logdet = 2 * torch.log(Lc.diagonal(dim1=1, dim2=2)).sum(1)
        score = -0.5 * (z.pow(2).sum(1) + logdet[:, None])  # (K, N)
        score = score + logw[:, None]
        if cons.m > 1:
            # the linearisation misjudges far components: those whose mean the model
            # already puts in the target's class (largest output) come first
            same = v.argmax(1)[:, None] == cons.t.argmax(1)[None]  # (K, N)
            score = torch.where(same, score, score - 1e6)
    else:
        assert cons.labels is not None
        # the margin of each class asked for, and its gradient, at each component's mean
        zs, Jz = _jacobian(cons.F, means, _out_dim(cons, means))
        LtJt = coords.Ls.transpose(1, 2) @ Jz.transpose(1, 2)  # (K, n, C)
        score = torch.empty(K, N, dtype=means.dtype, device=means.device)
        for c in cons.labels.unique().tolist():
            sel = (cons.labels == c).nonzero().flatten()
            with torch.enable_grad():
                z = zs.detach().clone().requires_grad_(True)
                g = cons.margin(z, sel[:1].expand(K))
                (dg,) = torch.autograd.grad(g.sum(), z)
            sd = (LtJt @ dg[:, :, None])[:, :, 0].norm(dim=1)  # |L^T grad g|
            # probability that the class is met under the component, to first order
            logphi = torch.special.log_ndtr((g.detach() - CLASS_MARGIN) / sd.clamp(min=1e-12))
            # as above, components whose mean is already in the class come first
            penalty = torch.where(zs.argmax(1) == c, 0.0, 1e6)
            score[:, sel] = (logphi + logw - penalty)[:, None]
    top = score.topk(n_comp, dim=0).indices.T  # (N, n_comp)
    return top.contiguous(), n_comp


def _jacobian(F: Callable[[Tensor], Tensor], x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``F(x)`` (k, m) and its Jacobian (k, m, n), by one backward pass over ``m`` copies."""
    k, n = x.shape
    vals = torch.empty(k, m, dtype=x.dtype, device=x.device)
    J = torch.empty(k, m, n, dtype=x.dtype, device=x.device)
    # outputs per chunk so that a chunk holds about 4096 copies of the input
    step = max(1, min(m, 4096 // max(k, 1)))
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for j0 in range(0, m, step):
            j1 = min(m, j0 + step)
            r = j1 - j0
            xr = x.detach().repeat(r, 1).requires_grad_(True)
            out = F(xr)  # (r * k, m)
            w = eye[j0:j1].repeat_interleave(k, 0)
            (g,) = torch.autograd.grad(out, xr, w)
            J[:, j0:j1] = g.reshape(r, k, n).transpose(0, 1)
            if j0 == 0:
                vals = out[:k].detach()
    return vals, J


def _out_dim(cons: _Constraint, x: Tensor) -> int:
    """The number of values ``cons.F`` gives per input, by running it on one row of ``x``."""
    with torch.no_grad():
        return int(cons.F(x[:1]).shape[1])
