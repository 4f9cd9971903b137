"""``nninv.diagnose``: how much a model forgets, layer by layer.

For each layer the diagnosis gives its type and shapes; for linear layers the
rank, nullity (the number of input directions it ignores) and condition
number; for activations whether they are injective. For the whole model it
gives the local dimension of the preimage of one output (``n - rank J`` with
``J`` the Jacobian at a typical input: the first data sample, else a seeded
uniform draw) and, with data, the fraction of the data's energy in each linear
layer's row space: the part that the pseudo-inverse can recover. Where the
model is a chain of known layers the rank is exact: it is carried layer by
layer as a subspace, and an injective activation's Jacobian (a positive
diagonal) keeps it whatever its scale, so saturated units cannot hide
directions. Otherwise it is estimated from the autograd Jacobian, and the
diagnosis says so. ``str(diagnosis)`` is a table ending in a verdict
in words.
"""

from __future__ import annotations

__all__ = ["Diagnosis", "LayerDiagnosis", "diagnose"]

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import model_dtype_device, positive_int
from ..errors import NNInvError
from .chain import MAX_DENSE, Affine, LayerInfo, analyse, eval_mode
from .io import as_module


@dataclass(frozen=True)
class LayerDiagnosis:
    """One layer of a :class:`Diagnosis`.

    ``rank``, ``nullity`` and ``cond`` are None for non-linear layers and for
    linear ones too large to make dense; ``injective`` is None when unknown;
    ``row_space_energy`` is None without data or for non-linear layers.
    """

    index: int
    name: str
    type: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int | None
    nullity: int | None
    cond: float | None
    injective: bool | None
    row_space_energy: float | None
    note: str


@dataclass(frozen=True)
class Diagnosis:
    """What a model keeps and forgets; see :func:`diagnose`.

    Attributes
    ----------
    layers : tuple of LayerDiagnosis
    input_shape, output_shape : tuple of int
    preimage_dim : int or None
        Local dimension of the set of inputs sharing one output, at a typical
        input (None when the Jacobian was too large to form).
    injective : bool or None
        Whether every output has at most one input (None: unknown).
    verdict : str
        The diagnosis in words.
    preimage_dim_exact : bool
        True when ``preimage_dim`` was carried exactly through a chain of
        known layers; False when it was estimated from the numerical rank of
        the autograd Jacobian at one input (saturated units may then hide
        directions).
    lipschitz : dict of str to float or None
        For a model invertible by construction (``bijective = True`` with an
        ``inverse`` and a ``lipschitz()`` method, e.g.
        ``nninv.invertible.BijectiveClassifier``): the measured Lipschitz
        bounds its invertibility rests on, by block; None for other models.
    """

    layers: tuple[LayerDiagnosis, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    preimage_dim: int | None
    injective: bool | None
    verdict: str
    lipschitz: dict[str, float] | None = None
    preimage_dim_exact: bool = True

    def table(self) -> str:
        head = [
            "#",
            "name",
            "type",
            "in -> out",
            "rank",
            "nullity",
            "cond",
            "injective",
            "row-space energy",
        ]
        rows = []
        for ld in self.layers:
            rows.append(
                [
                    str(ld.index),
                    ld.name,
                    ld.type,
                    f"{_shape(ld.in_shape)} -> {_shape(ld.out_shape)}",
                    "-" if ld.rank is None else str(ld.rank),
                    "-" if ld.nullity is None else str(ld.nullity),
                    "-" if ld.cond is None else f"{ld.cond:.3g}",
                    {True: "yes", False: "no", None: "?"}[ld.injective],
                    "-" if ld.row_space_energy is None else f"{100 * ld.row_space_energy:.1f}%",
                ]
            )
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
        ]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(head, widths)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        notes = [f"  layer {ld.index}: {ld.note}" for ld in self.layers if ld.note]
        if notes:
            lines += ["", "notes:", *notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.table()}\n\n{self.verdict}"


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) if s else "()"


def _layer_diag(layer: LayerInfo, energy: float | None) -> LayerDiagnosis:
    base: dict[str, Any] = dict(
        index=layer.index,
        name=layer.name,
        type=layer.type_name,
        kind=layer.kind,
        in_shape=layer.in_shape,
        out_shape=layer.out_shape,
    )
    n, m = math.prod(layer.in_shape), math.prod(layer.out_shape)
    if layer.kind == "reshape":
        return LayerDiagnosis(
            **base, rank=n, nullity=0, cond=1.0, injective=True, row_space_energy=None, note=""
        )
    if layer.kind == "linear":
        block = Affine([layer], layer.in_shape, layer.out_shape)
        if n * m > MAX_DENSE:
            return LayerDiagnosis(
                **base,
                rank=None,
                nullity=None,
                cond=None,
                injective=None if m >= n else False,
                row_space_energy=None,
                note=f"{m} x {n} operator too large to make dense",
            )
        f = block.factor()
        return LayerDiagnosis(
            **base,
            rank=f.rank,
            nullity=f.nullity,
            cond=f.cond,
            injective=f.nullity == 0,
            row_space_energy=energy,
            note="",
        )
    if layer.kind == "activation":
        act = layer.activation
        assert act is not None
        note = "" if act.injective else "not injective: every pre-activation <= 0 gives 0"
        return LayerDiagnosis(
            **base,
            rank=None,
            nullity=None,
            cond=None,
            injective=act.injective,
            row_space_energy=None,
            note=note,
        )
    if layer.kind == "shift":
        return LayerDiagnosis(
            **base,
            rank=None,
            nullity=None,
            cond=None,
            injective=False,
            row_space_energy=None,
            note="invertible only up to an additive constant (one lost direction)",
        )
    if layer.kind == "piecewise":
        return LayerDiagnosis(
            **base,
            rank=None,
            nullity=None,
            cond=None,
            injective=False,
            row_space_energy=None,
            note="piecewise linear, not injective",
        )
    return LayerDiagnosis(
        **base,
        rank=None,
        nullity=None,
        cond=None,
        injective=None,
        row_space_energy=None,
        note="no closed-form inverse known; only method='optimize' applies",
    )


def _as_input(data: Any, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, Tensor):
        raise NNInvError(f"data must be a tensor or an array, got {type(data).__name__}")
    if data.shape[1:].numel() != math.prod(shape) or data.ndim < 2:
        raise NNInvError(
            f"data shaped {tuple(data.shape)} does not match the model input (N, "
            f"{', '.join(map(str, shape))})"
        )
    if data.shape[0] == 0:
        raise NNInvError("data holds no samples")
    data = data.reshape(-1, *shape).to(dtype)
    if not bool(torch.isfinite(data).all()):
        raise NNInvError("data contains NaN or inf")
    return data


def diagnose(
    model: nn.Module,
    data: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    max_samples: int = 10000,
) -> Diagnosis:
    """Diagnose what ``model`` keeps of its input and what it forgets.

    Parameters
    ----------
    model : torch.nn.Module or a fitted scikit-learn MLPClassifier/MLPRegressor
        (converted by :func:`nninv.model.io.as_module`).
    data : Tensor or ndarray, optional
        Inputs shaped ``(N, *input_shape)``; gives the fraction of their energy
        in each linear layer's row space (what the pseudo-inverse keeps).
    input_shape : sequence of int, optional
        Needed when the model does not tell it (e.g. it starts with a Conv2d);
        defaults to ``data.shape[1:]``.
    max_samples : int
        At most this many samples of ``data`` are used.

    Returns
    -------
    Diagnosis

    Examples
    --------
    >>> f = nn.Sequential(nn.Linear(784, 10), nn.Sigmoid())
    >>> d = diagnose(f)
    >>> d.layers[0].rank, d.layers[0].nullity, d.preimage_dim
    (10, 774, 774)
    """
    model = as_module(model)
    positive_int(max_samples, "max_samples")
    if input_shape is None and data is not None and getattr(model, "input_shape", None) is None:
        first = next((m for m in model.modules() if not isinstance(m, nn.Sequential)), None)
        if not isinstance(first, nn.Linear):
            input_shape = tuple(data.shape[1:])
    with eval_mode(model):
        chain = analyse(model, input_shape)
        dtype, device = model_dtype_device(model)
        energies: dict[int, float] = {}
        if data is not None:
            X = _as_input(data, chain.input_shape, torch.float64)[:max_samples]
            h = X.reshape(X.shape[0], -1)
            with torch.no_grad():
                for layer in chain.layers:
                    if (
                        layer.kind == "linear"
                        and math.prod(layer.in_shape) * math.prod(layer.out_shape) <= MAX_DENSE
                    ):
                        f = Affine([layer], layer.in_shape, layer.out_shape).factor()
                        tot = float(h.pow(2).sum())
                        kept = float((h @ f.Vh.T).pow(2).sum())
                        energies[layer.index] = kept / tot if tot > 0 else 1.0
                    if layer.kind == "unsupported" and layer.module is model:
                        break
                    mod = layer.module
                    hh = h.reshape(h.shape[0], *layer.in_shape)
                    try:
                        h = _run_double(mod, hh)
                    except Exception:
                        break
                    h = h.reshape(h.shape[0], -1)
        layers = tuple(_layer_diag(layer, energies.get(layer.index)) for layer in chain.layers)
        x0 = _typical_input(chain, data)
        jdim: int | None = _chain_rank(chain, x0)
        exact = jdim is not None
        if jdim is None:
            jdim = _jacobian_rank(model, chain, x0, dtype, device)
    n = chain.n_in
    pre_dim = None if jdim is None else n - jdim
    injective: bool | None
    if any(ld.injective is False for ld in layers):
        injective = False
    elif all(ld.injective for ld in layers):
        injective = True
    else:
        injective = None if pre_dim is None or pre_dim == 0 else False
    verdict = _verdict(chain, layers, pre_dim, injective, data is not None, exact)
    lip = _bijective_bounds(model)
    if lip is not None:
        # invertible by construction (duck-typed: this layer does not import nninv.invertible)
        injective = True if all(v < 1 for v in lip.values()) else None
        pre_dim = 0 if injective else pre_dim
        verdict = _bijective_verdict(chain, lip, injective is True)
    return Diagnosis(
        layers, chain.input_shape, chain.output_shape, pre_dim, injective, verdict, lip, exact
    )


def _bijective_bounds(model: nn.Module) -> dict[str, float] | None:
    if getattr(model, "bijective", False) is not True or not callable(
        getattr(model, "inverse", None)
    ):
        return None
    lip = getattr(model, "lipschitz", None)
    return dict(lip()) if callable(lip) else {}


def _bijective_verdict(chain: Any, lip: dict[str, float], injective: bool) -> str:
    n, m = chain.n_in, chain.n_out
    parts = [
        f"The model maps {n} inputs to {m} outputs and is invertible by construction "
        "(bijective = True, with an inverse): it is injective, every output has exactly one "
        "input, and method='auto' inverts it exactly (method='bijective')."
    ]
    if lip:
        bounds = ", ".join(f"{k}: {v:.4g}" for k, v in lip.items())
        parts.append(
            f"Measured Lipschitz bounds of its residual blocks (each must be < 1): {bounds}."
        )
    if not injective:
        parts = [
            f"The model maps {n} inputs to {m} outputs and claims to be invertible by "
            "construction, but a residual block's measured Lipschitz bound is >= 1 "
            f"({', '.join(f'{k}: {v:.4g}' for k, v in lip.items() if v >= 1)}): its inverse "
            "may not exist or converge, and injectivity is not guaranteed."
        ]
    return " ".join(parts)


def _run_double(mod: nn.Module, h: Tensor) -> Tensor:
    import copy

    p = next(iter(mod.parameters()), None)
    b = next(iter(mod.buffers()), None)
    if (p is not None and p.dtype != torch.float64) or (
        b is not None and b.is_floating_point() and b.dtype != torch.float64
    ):
        mod = copy.deepcopy(mod).double()
    return mod(h)


def _typical_input(chain: Any, data: Any) -> Tensor:
    """The point where the local rank is taken: the first data sample, else U(0, 1)."""
    if data is not None:
        return _as_input(data, chain.input_shape, torch.float64)[:1]
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, *chain.input_shape, generator=g, dtype=torch.float64)


def _orth(M: Tensor, r: int) -> Tensor:
    """Orthonormal basis (d, r) of the leading ``r``-dimensional range of ``M``."""
    if r == 0:
        return M.new_zeros(M.shape[0], 0)
    U, _, _ = torch.linalg.svd(M, full_matrices=False)
    return U[:, :r]


def _count(s: Tensor, tol: float) -> int:
    return int((s > tol).sum())


def _chain_rank(chain: Any, x0: Tensor) -> int | None:
    """Exact rank of the Jacobian at ``x0``, carried through the chain's steps.

    The range ``Q`` (orthonormal, d x r) of the Jacobian so far is pushed
    through each step: an affine block ``A`` keeps ``rank(A Q)`` directions
    (counted with ``A``'s own rank tolerance, so a layer's rank and the chain's
    agree); an injective activation multiplies by a positive diagonal, which
    keeps the rank exactly however small its entries (a saturated sigmoid's
    derivative underflows, but it is never zero); ReLU's diagonal is 0/1 at
    ``x0``; softmax and log-softmax drop the all-ones direction when it lies in
    the range. None when a step is unsupported or an operator too large to
    make dense: the caller then estimates from the autograd Jacobian.
    """
    from .chain import Elementwise, Shift

    n = chain.n_in
    if n * n > MAX_DENSE:
        return None
    eps = torch.finfo(torch.float64).eps
    h = x0.reshape(1, -1).to(torch.float64)
    Q: Tensor | None = None  # None: the whole space (the identity, not formed)
    r = n
    steps = chain.steps
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        d_here = h.shape[1]
        if isinstance(step, Affine) and step.is_reshape:
            # a permutation of the entries: the rank and the whole space are kept
            with torch.no_grad():
                if Q is not None:
                    Q = step.forward(Q.T.contiguous()).T
                h = step.forward(h)
        elif isinstance(step, Affine):
            if step.n * step.m > MAX_DENSE:
                return None
            try:
                A, b = step.matrix(torch.float64)
                tol = step.factor(torch.float64).tol
            except Exception:
                return None
            M = A if Q is None else A @ Q
            U, s, _ = torch.linalg.svd(M, full_matrices=False)
            r = _count(s, tol)
            Q = None if r == A.shape[0] else U[:, :r]
            with torch.no_grad():
                h = h @ A.T + b
        elif isinstance(step, Elementwise):
            z = h.detach().clone().requires_grad_(True)
            (dz,) = torch.autograd.grad(step.act.forward(z).sum(), z)
            dz = dz[0]
            if step.act.injective:
                # a positive diagonal: the rank is unchanged and the whole space maps onto itself
                if Q is not None and not last:
                    Q = _orth(dz.abs().clamp_min(torch.finfo(torch.float64).tiny)[:, None] * Q, r)
            elif Q is None:
                # a 0/1 diagonal on the whole space: its range is the active units' axes
                active = dz != 0
                r = int(active.sum())
                Q = None if r == d_here else torch.eye(d_here, dtype=torch.float64)[:, active]
            else:
                M = dz[:, None] * Q
                U, s, _ = torch.linalg.svd(M, full_matrices=False)
                r = _count(s, max(M.shape) * eps)
                Q = None if r == d_here else U[:, :r]
            with torch.no_grad():
                h = step.act.forward(h)
        elif isinstance(step, Shift):
            if len(step.layer.in_shape) != 1:
                return None
            ones = torch.full((d_here,), d_here**-0.5, dtype=torch.float64)
            inside = ones - (Q @ (Q.T @ ones) if Q is not None else ones)
            if float(inside.norm()) <= math.sqrt(eps):
                # the constant direction is in the range: softmax forgets it
                r -= 1
                basis = torch.eye(d_here, dtype=torch.float64) if Q is None else Q
                proj = basis - ones[:, None] * (ones @ basis)[None, :]
                Q = _orth(proj, r)
            with torch.no_grad():
                h = step.forward(h)
            if not last and not step.log:
                # softmax's diagonal factor diag(p) is positive: it keeps the rank
                p = h[0].clamp_min(torch.finfo(torch.float64).tiny)
                Q = _orth(
                    p[:, None] * (torch.eye(d_here, dtype=torch.float64) if Q is None else Q), r
                )
        else:
            return None
    return r


def _jacobian_rank(
    model: nn.Module, chain: Any, x0: Tensor, dtype: torch.dtype, device: torch.device
) -> int | None:
    n, m = chain.n_in, chain.n_out
    if n * m > MAX_DENSE:
        return None
    x0 = x0.to(device, dtype)

    def f(x: Tensor) -> Tensor:
        return model(x.reshape(1, *chain.input_shape)).reshape(-1)

    try:
        with warnings.catch_warnings():
            # torch.func's forward mode warns about torch.jit internals, not the user's concern
            warnings.simplefilter("ignore", DeprecationWarning)
            if n <= m:
                J = torch.func.jacfwd(f)(x0.reshape(-1))
            else:
                J = torch.func.jacrev(f)(x0.reshape(-1))
    except Exception:
        return None
    rtol = max(n, m) * torch.finfo(dtype).eps
    return int(torch.linalg.matrix_rank(J.detach().to(torch.float64), rtol=rtol))


def _verdict(
    chain: Any,
    layers: tuple[LayerDiagnosis, ...],
    pre_dim: int | None,
    injective: bool | None,
    with_data: bool,
    exact: bool = True,
) -> str:
    n, m = chain.n_in, chain.n_out
    parts = [f"The model maps {n} inputs to {m} outputs."]
    if pre_dim is None:
        parts.append("The preimage dimension could not be computed (Jacobian too large).")
    elif pre_dim == 0 and injective is not False:
        parts.append(
            "Its Jacobian has full column rank: the model is injective, every output has at "
            "most one input, and method='pinv' inverts it exactly."
        )
    elif pre_dim == 0:
        parts.append(
            "Its Jacobian has full column rank at a typical input, but a non-injective layer "
            "(see the table) can still merge inputs."
        )
    else:
        relu = any(
            ld.kind in ("activation", "piecewise") and ld.injective is False for ld in layers
        )
        parts.append(
            f"The preimage of one output is {'at least ' if relu else ''}{pre_dim}-dimensional: "
            f"{pre_dim} input directions leave the output unchanged (n = {n} minus the "
            f"Jacobian's rank {n - pre_dim}"
            + (
                ")."
                if exact
                else ", estimated from the autograd Jacobian at one input: the model is not a "
                "chain of known layers, and saturated units may hide directions)."
            )
        )
        first = next((ld for ld in layers if ld.kind == "linear"), None)
        if first is not None and first.nullity:
            parts.append(
                f"Layer {first.index} ({first.type}) alone has rank {first.rank} and ignores "
                f"{first.nullity} directions (its null space)."
            )
            if first.row_space_energy is not None:
                kept = 100 * first.row_space_energy
                parts.append(
                    f"The pseudo-inverse returns the preimage's minimum-norm member, which keeps "
                    f"only an input's part in that layer's row space: on the given data "
                    f"{kept:.1f}% of the energy, so pinv loses {100 - kept:.1f}% of an input "
                    "while reproducing the output exactly."
                )
            else:
                parts.append(
                    "The pseudo-inverse returns the preimage's minimum-norm member, which keeps "
                    "only an input's part in that layer's row space (pass data= to measure how "
                    "much of the data that is)."
                )
        parts.append(
            "A prior over the data picks a better member: method='analytic' with "
            "nninv.priors.GaussianPrior or GaussianMixturePrior, or method='optimize'."
        )
    return " ".join(parts)
