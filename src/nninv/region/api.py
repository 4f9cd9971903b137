"""``nninv.region``: the inputs in a box that a network maps into an output set.

Three modes share one result (:class:`~nninv.region.result.Region`):

- ``"exact"``: every linear region of the piecewise-linear network inside the box,
  cut by the output set (:mod:`._exact`); the polytopes *are* the region;
- ``"under"``: a few polytopes whose union lies inside the region, sound by
  construction and re-checked: carved out of the exact region where it and its
  complement are enumerated within ``exact_budget`` (:mod:`._peel`), otherwise
  from CROWN bounds on input boxes (:mod:`._approx`);
- ``"over"``: polytopes whose union contains the region.

Volumes are exact (qhull). The coverage of an approximation is certified (its
exact volume over the exact region volume) when an exact enumeration of the
region finishes within ``exact_budget``; otherwise it is over an estimate from
uniform samples, with a 95% interval, and marked as such.
"""

from __future__ import annotations

__all__ = ["MODES", "region"]

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NNInvError
from ..model.chain import eval_mode
from ..model.io import as_module, load_model
from ..targets import ClassTarget, OutputSet, as_output_set
from ._approx import approximate
from ._exact import Enumeration, enumerate_region
from ._geom import MAX_EXACT_DIM, facets
from ._net import PLNet, as_plnet
from ._peel import complement_parts, peel
from .result import Polytope, Region

#: ``info["volumes"]`` above ``MAX_EXACT_DIM`` inputs.
ESTIMATED = "estimated (uniform draws, 400 hits each)"

#: The modes :func:`region` knows.
MODES = ("exact", "under", "over")


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _to_polytope(
    net: PLNet, A: np.ndarray, b: np.ndarray, V: np.ndarray, vol: float, part: int
) -> Polytope:
    Af, bf = facets(A, b, V)
    Ax, bx = net.constraints_to_x(Af, bf)
    norms = np.linalg.norm(Ax, axis=1)
    Ax, bx = Ax / norms[:, None], bx / norms
    return Polytope(
        torch.from_numpy(Ax),
        torch.from_numpy(bx),
        torch.from_numpy(net.to_x(V)),
        float(vol * net.box_volume),
        int(part),
    )


def _recheck(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    polys: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float]],
    time_limit: float,
    seed: int,
) -> tuple[str, float]:
    """Check that each inner polytope maps into its part.

    Exactly where it finishes in ``time_limit`` (no linear region inside the
    polytope maps into the complement of its part); otherwise at the vertices and
    at up to 2,000 uniform points per polytope. Returns (how, the volume (unit cube) or
    share of points found outside).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    bad = 0.0
    exact = time_limit > 0
    for A, b, part, V, _ in polys:
        G, g = parts[part]
        if G.shape[0] == 0:
            continue
        slack = 1e-9 * (1 + np.abs(g))
        lo, hi = V.min(axis=0), V.max(axis=0)
        X = lo + rng.random((8_000, V.shape[1])) * (hi - lo)
        X = np.vstack([V, X[np.all(X @ A.T <= b, axis=1)][:2_000]])
        ok = np.all(net.forward_u(X) @ G.T <= g + slack, axis=1)
        if not ok.all():
            return "sampled", float((~ok).mean())
        left = time_limit - (time.perf_counter() - t0)
        if exact and left > 0:
            comp = [(-G[r : r + 1], -g[r : r + 1]) for r in range(G.shape[0])]
            e = enumerate_region(net, comp, max_regions=10**7, time_limit=left, root=(A, b, V))
            if e.status == "complete":
                bad += sum(p.volume for p in e.pieces)
                continue
        exact = False
    return ("exact" if exact else "sampled"), bad


def region(
    model: nn.Module | str | Any,
    output_set: OutputSet | ClassTarget | int,
    box: Any,
    mode: str = "exact",
    *,
    target: float = 0.9,
    max_polytopes: int = 1000,
    max_regions: int = 100_000,
    time_limit: float = 60.0,
    exact_budget: float | None = None,
    recheck: bool = True,
    n_samples: int = 20_000,
    seed: int = 0,
    progress: bool = False,
) -> Region:
    """The decision region ``{x in box : model(x) in output_set}``.

    Parameters
    ----------
    model : torch.nn.Module, path, or fitted scikit-learn MLP
        A piecewise-linear network (Linear, Conv, ReLU, LeakyReLU, max and average pooling,
        BatchNorm in eval, reshapes) with a flat input of ``d`` values. A model
        whose layers all act on the last axis of a ``(..., k)`` input (auto_park,
        declared ``(batch, 2, 2)``) is read as the map of one ``k``-vector: give a
        box of ``k`` rows.
    output_set : OutputSet, ClassTarget or int
        The outputs; a class index ``k`` means "class k wins" (ties count).
    box : array_like, shape (d, 2)
        ``[lo, hi]`` per input, ``lo < hi``.
    mode : {"exact", "under", "over"}
        ``"under"`` carves its polytopes out of the exact region when the region
        and its complement (an output set of one polyhedron) are enumerated within
        ``exact_budget``; otherwise, and for ``"over"``, it bounds the network on
        boxes (``info["strategy"]`` says which).
    target : float
        ``"under"``: stop once the polytopes cover this share of the region;
        ``"over"``: once the region fills this share of the polytopes.
    max_polytopes : int
        Polytope budget of ``"under"``/``"over"``.
    max_regions : int
        Limit on the linear regions the exact enumeration visits.
    time_limit : float
        Seconds for the main computation (stops with ``status="time_limit"``).
    exact_budget : float, optional
        Seconds an approximation may spend on the exact region volume that
        certifies its coverage, and (``"under"``) on the exact re-check (default
        ``min(5, time_limit)`` for up to 6 inputs, else 0; 0 skips both).
    recheck : bool
        ``"under"``: check every polytope: exactly where ``exact_budget`` allows
        (no linear region of the network inside it maps outside the output set),
        else at its vertices and up to 2,000 uniform points; ``info["rechecked"]`` says
        which. A failed check raises (it would be a bug).
    n_samples : int
        Uniform samples of the box for the approximations' splitting and for the
        sampled region estimate.
    seed : int
        Seed of every random draw.
    progress : bool
        tqdm bars on stderr: cells of the exact enumeration, splits of the boxes.

    Returns
    -------
    Region

    Raises
    ------
    NNInvError
        For an unknown mode, a box that does not fit the input, an output set
        over the wrong number of outputs, or a layer that is not piecewise linear.

    Examples
    --------
    >>> import torch, nninv
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> k = int(net(torch.zeros(1, 2)).argmax())  # the class at the box's centre
    >>> r = nninv.region(net, k, [[-1, 1], [-1, 1]])
    >>> r.status, r.coverage
    ('complete', 1.0)
    >>> bool(r.contains(r.sample(5)).all())
    True
    """
    t0 = time.perf_counter()
    _check_mode(mode, target)
    net = _read(model, box)
    parts = _output_parts(output_set, net)
    d = net.d
    rng = np.random.default_rng(seed)
    U = rng.random((n_samples, d))
    k = int(net.maps_into(U, parts).sum())
    est = _wilson(k, n_samples)
    box_vol = net.box_volume
    counts: dict[str, int] = {}
    info: dict[str, Any] = {}
    region_volume: float | None = None
    if mode == "exact":
        raw, status, region_volume = _exact_mode(
            net, parts, max_regions, time_limit, progress, counts
        )
    else:
        raw, status, region_volume = _approximate_mode(
            net,
            parts,
            mode,
            est,
            counts,
            info,
            target=target,
            max_polytopes=max_polytopes,
            max_regions=max_regions,
            time_limit=time_limit,
            exact_budget=exact_budget,
            recheck=recheck,
            n_samples=n_samples,
            seed=seed,
            progress=progress,
        )
    polys = tuple(_to_polytope(net, p[0], p[1], p[3], p[4], p[2]) for p in raw)
    vol_u = sum(p[4] for p in raw)
    cov, interval, certified = _coverage(mode, vol_u, region_volume, est)
    if "fresh_samples" in info:  # estimated volumes: the share of fresh region points held
        cov, lo, hi = _wilson(*info["fresh_samples"])
        interval = (lo, hi)
    status = _checked_status(mode, status, cov, float(target))
    outer_box = _outer_box(polys, d)
    counts["polytopes"] = len(polys)
    info["volumes"] = "exact (qhull)" if d <= MAX_EXACT_DIM else ESTIMATED
    return Region(
        mode=mode,
        polytopes=polys,
        box=torch.from_numpy(np.stack([net.lo, net.hi], axis=1)),
        volume=vol_u * box_vol,
        share=vol_u,
        region_volume=None if region_volume is None else region_volume * box_vol,
        region_estimate=(est[0] * box_vol, est[1] * box_vol, est[2] * box_vol),
        coverage=float(cov),
        coverage_interval=(float(interval[0]), float(interval[1])),
        certified=certified,
        outer_box=outer_box,
        status=status,
        seconds=time.perf_counter() - t0,
        counts=counts,
        info=info,
    )


def _read(model: Any, box: Any) -> PLNet:
    """The model (a module, a path, a fitted scikit-learn MLP) on ``box`` as a PLNet."""
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = load_model(model)
    module = as_module(model)
    with eval_mode(module):
        return as_plnet(module, box)


def _trim(raw: list, target: float, region_volume: float) -> list:
    """Drop the smallest inner polytopes while the rest still cover ``target``."""
    order = sorted(range(len(raw)), key=lambda i: raw[i][4])
    total = sum(p[4] for p in raw)
    keep = set(range(len(raw)))
    for i in order:
        if total - raw[i][4] >= target * region_volume:
            total -= raw[i][4]
            keep.discard(i)
        else:
            break
    return [raw[i] for i in sorted(keep)]


def _checked_status(mode: str, status: str, cov: float, target: float) -> str:
    """``"uncertain"`` for an inner run whose reported coverage falls short of a
    target its sample points said was met (estimated volumes, above
    ``MAX_EXACT_DIM`` inputs); else ``status``."""
    if mode == "under" and status == "target" and not cov >= target * (1 - 1e-9):
        return "uncertain"
    return status


def _check_mode(mode: str, target: float) -> None:
    if mode not in MODES:
        raise NNInvError(f"mode={mode!r} is not one of {', '.join(repr(m) for m in MODES)}")
    if not 0.0 < float(target) <= 1.0:
        raise NNInvError(f"target must be in (0, 1], got {target}")


def _bar(progress: bool, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr (closed by the caller), or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=unit, leave=False)


def _run_exact(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    max_regions: int,
    limit: float,
    progress: bool,
) -> Enumeration:
    bar = _bar(progress, "region cells", "cell")
    try:
        return enumerate_region(net, parts, max_regions=max_regions, time_limit=limit, progress=bar)
    finally:
        if bar is not None:
            bar.close()


def _approximate_mode(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    mode: str,
    est: tuple[float, float, float],
    counts: dict[str, int],
    info: dict[str, Any],
    *,
    target: float,
    max_polytopes: int,
    max_regions: int,
    time_limit: float,
    exact_budget: float | None,
    recheck: bool,
    n_samples: int,
    seed: int,
    progress: bool,
) -> tuple[list, str, float | None]:
    """``"under"``/``"over"``: the polytopes, the status and the exact region volume (or None)."""
    t0 = time.perf_counter()
    region_volume: float | None = None
    if exact_budget is None:
        budget = min(5.0, time_limit) if net.d <= MAX_EXACT_DIM else 0.0
    else:
        budget = float(exact_budget)
    if budget > 0:
        e = _run_exact(net, parts, max_regions, budget, progress)
        info["exact_status"] = e.status
        if e.status == "complete":
            region_volume = sum(p.volume for p in e.pieces)
            counts["linear_regions"] = e.linear_regions
    peeled = None
    if mode == "under" and region_volume is not None:
        peeled = _peel_mode(
            net,
            parts,
            region_volume,
            budget,
            t0,
            target,
            max_polytopes,
            time_limit,
            n_samples,
            seed,
            info,
        )
    if peeled is not None:
        raw, status = peeled
    else:
        raw, status = _bounds_mode(
            net, parts, mode == "over", region_volume, counts, info, target=target,
            max_polytopes=max_polytopes, time_limit=time_limit, n_samples=n_samples,
            seed=seed, progress=progress,
        )  # fmt: skip
    if mode == "under":
        if "fresh_samples" not in info:  # estimated volumes: the fresh points' coverage holds
            raw = _trim(raw, float(target), region_volume if region_volume else est[0])
        if recheck:
            how, outside = _recheck(net, parts, raw, budget, seed)
            info["rechecked"] = how
            if outside > 1e-12:
                raise NNInvError(
                    f"internal error: an inner polytope leaves the region ({how} check: "
                    f"{outside:.3g} outside); please report it"
                )
    return raw, status, region_volume


def _bounds_mode(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    outer: bool,
    region_volume: float | None,
    counts: dict[str, int],
    info: dict[str, Any],
    *,
    target: float,
    max_polytopes: int,
    time_limit: float,
    n_samples: int,
    seed: int,
    progress: bool,
) -> tuple[list, str]:
    """``"under"``/``"over"`` from linear bounds on boxes (:mod:`._approx`)."""
    bar = _bar(progress, "region boxes", "split")
    try:
        raw, stats = approximate(
            net,
            parts,
            outer=outer,
            target=float(target),
            max_polytopes=int(max_polytopes),
            time_limit=time_limit,
            n_samples=n_samples,
            seed=seed,
            region_volume=region_volume,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    counts.update(boxes=stats["boxes"], splits=stats["splits"])
    if "fresh" in stats:
        info["fresh_samples"] = stats["fresh"]
    info["strategy"] = "bounds"
    return raw, stats["status"]


def _peel_mode(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    region_volume: float,
    budget: float,
    t0: float,
    target: float,
    max_polytopes: int,
    time_limit: float,
    n_samples: int,
    seed: int,
    info: dict[str, Any],
) -> tuple[list, str] | None:
    """``"under"`` from the exact region: polytopes carved to avoid its complement.

    None (the caller falls back to bounds on boxes) when the output set is a union
    of several polyhedra, its complement cannot be enumerated within what is left
    of ``budget``, or carving fails.
    """
    comp = complement_parts(parts) if len(parts) == 1 else None
    left = budget - (time.perf_counter() - t0)
    if comp is None or left <= 0:
        return None
    c = enumerate_region(net, comp, max_regions=10**7, time_limit=left)
    if c.status != "complete":
        return None
    rng = np.random.default_rng(seed)
    U = rng.random((n_samples, net.d))
    X = U[net.maps_into(U, parts)]
    raw, stats = peel(
        c.pieces,
        region_volume,
        X,
        target=target,
        max_polytopes=max_polytopes,
        time_limit=time_limit,
        seed=seed,
    )
    if stats["status"] == "failed":
        return None
    info["strategy"] = "peel"
    return raw, stats["status"]


def _coverage(
    mode: str, vol_u: float, region_volume: float | None, est: tuple[float, float, float]
) -> tuple[float, tuple[float, float], bool]:
    """The coverage, its interval and whether it is certified by the exact region volume."""
    if region_volume is not None and region_volume > 0:
        cov = vol_u / region_volume if mode != "exact" else 1.0
        interval = (cov, cov)
        certified = True
    elif region_volume == 0.0:  # an empty region, certified: nothing to miss
        cov, interval, certified = 1.0, (1.0, 1.0), True
    else:
        cov = vol_u / est[0] if est[0] > 0 else math.nan
        interval = (
            vol_u / est[2] if est[2] > 0 else math.nan,
            vol_u / est[1] if est[1] > 0 else math.inf,
        )
        certified = False
    return cov, interval, certified


def _output_parts(
    output_set: OutputSet | ClassTarget | int, net: PLNet
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The output set's polyhedra ``(A, b)`` in float64, checked against the model's outputs."""
    out_set = as_output_set(output_set, net.n_out)
    if out_set.n_outputs != net.n_out:
        raise NNInvError(
            f"the output set constrains {out_set.n_outputs} outputs but the model has {net.n_out}"
        )
    return [(p.A.numpy().astype(np.float64), p.b.numpy().astype(np.float64)) for p in out_set.parts]


def _exact_mode(
    net: PLNet,
    parts: list[tuple[np.ndarray, np.ndarray]],
    max_regions: int,
    time_limit: float,
    progress: bool,
    counts: dict[str, int],
) -> tuple[list, str, float | None]:
    """``"exact"``: the pieces, the status and the region volume (None unless complete)."""
    region_volume: float | None = None
    e = _run_exact(net, parts, max_regions, time_limit, progress)
    raw = [(p.A, p.b, p.part, p.V, p.volume) for p in e.pieces]
    status = e.status
    counts.update(
        cells=e.cells,
        linear_regions=e.linear_regions,
        pruned=e.pruned_out,
        kept_whole=e.kept_inside,
    )
    if status == "complete":
        region_volume = sum(p[4] for p in raw)
    return raw, status, region_volume


def _outer_box(polys: tuple[Polytope, ...], d: int) -> torch.Tensor:
    """The bounding box ``(d, 2)`` of the polytopes' vertices (empty rows when there are none)."""
    if polys:
        allv = torch.cat([p.vertices for p in polys])
        return torch.stack([allv.min(0).values, allv.max(0).values], dim=1)
    return torch.empty(d, 2, dtype=torch.float64)
