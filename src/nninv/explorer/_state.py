"""What the explorer's server computes: per-target views of a preimage, kept between requests.

A :class:`Explorer` holds a model (a float64 copy), the images a user can pick
from, the priors (pinv's none, a Gaussian and a mixture, fitted on training
images) and optionally a :class:`~nninv.learned.Decoder`. Choosing an image or
typing an output builds a :class:`View` once: the target ``y``, its
:func:`nninv.preimage` within the image bounds, the inversions under each prior
with their residuals, and the slider directions. Every later interaction
(slide, project a drawing, find the closest input of another class) starts
from that view, so it costs a projection, not a rebuild.

The slider directions are the principal directions of the Gaussian prior
restricted to the preimage's null space: with ``N`` the preimage's orthonormal
basis (``Preimage.basis``) and ``Sigma`` the prior's covariance, the top
eigenvectors ``V`` of ``N^T Sigma N`` give directions ``d_i = N v_i`` scaled by
``sqrt(lambda_i)`` (one slider unit is one prior standard deviation). A slider
position ``t`` asks for ``x_base + sum_i t_i sqrt(lambda_i) d_i``, which keeps
the output of a one-layer model fixed exactly; the answer shown is the member
of the bounded preimage closest to it (``Preimage.project``), so every image on
the page is a true member in ``[lo, hi]``.

That exact description is used for one affine layer (then injective
activations), where :func:`nninv.preimage` is a polytope and its projection a
QP of a few tens of milliseconds. For deeper networks (a CNN) building the
exact piece takes a minute, so the explorer works on the true curved set
instead: the basis is the null space of the Jacobian at the base point, and a
point is brought back onto ``{x : f(x) = y}`` within the bounds by the
Gauss-Newton projection of :mod:`nninv.methods.projection` (minimum-norm
steps: a nearby member, not a certified closest one).
"""

from __future__ import annotations

__all__ = ["Explorer", "InversionView", "View"]

import contextlib
import copy
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NNInvError, NNInvWarning
from ..geometry import Preimage, closest, preimage
from ..geometry.sets import core_kind, exact_output
from ..methods.invert import invert
from ..methods.projection import project as project_onto
from ..model.chain import analyse, eval_mode
from ..priors import GaussianPrior, Prior
from ..targets import ClassTarget

_F64 = torch.float64

#: Inversions shown side by side: label -> (``invert`` method, prior key).
INVERSIONS: dict[str, tuple[str, str | None]] = {
    "pinv": ("pinv", None),
    "gaussian": ("analytic", "gaussian"),
    "mixture": ("analytic", "mixture"),
    "decoder": ("decoder", None),
}


@dataclass(frozen=True)
class InversionView:
    """One inversion of a view's target: ``x`` (flat, float64), its residual or why it failed."""

    name: str
    x: Tensor | None
    residual: float
    converged: bool
    error: str | None = None


@dataclass
class View:
    """Everything precomputed for one target ``y``.

    Attributes
    ----------
    key : str
        ``"image:<i>"`` or ``"output:<hash>"``; the id the page sends back.
    y : Tensor
        ``(1, m)`` float64 target.
    image : Tensor or None
        ``(n,)`` the picked image (None for a typed output).
    label : int or None
        Its label, when the data has labels.
    pre : Preimage or None
        The preimage within bounds (``bounded``) or without (when the bounded
        one is empty); None for a deep model (Gauss-Newton mode, ``exact``
        False) or when it has no description (``pre_error`` says why).
    inversions : dict
        Name -> :class:`InversionView`.
    directions : Tensor
        ``(n, k)`` slider directions, already scaled by the prior's std.
    """

    key: str
    y: Tensor
    image: Tensor | None
    label: int | None
    pre: Preimage | None
    bounded: bool
    pre_error: str | None
    inversions: dict[str, InversionView]
    directions: Tensor
    spread: list[float] = field(default_factory=list)
    exact: bool = True
    anchor: Any = None  # a member to fall back towards (curved sets)

    def base(self, name: str) -> Tensor:
        """The flat starting point ``name`` (``"image"`` or an inversion's name)."""
        if name == "image":
            if self.image is None:
                raise NNInvError("base 'image' needs a picked image; this view is a typed output")
            return self.image
        inv = self.inversions.get(name)
        if inv is None or inv.x is None:
            valid = [k for k, v in self.inversions.items() if v.x is not None]
            if self.image is not None:
                valid.insert(0, "image")
            raise NNInvError(f"unknown or failed base {name!r}; valid: {', '.join(valid)}")
        return inv.x


def _display_shape(data_shape: tuple[int, ...], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Height and width to draw one input as a grey image (a row when nothing fits)."""
    for shape in (data_shape, input_shape):
        if len(shape) >= 2 and math.prod(shape[:-2]) == 1:
            return int(shape[-2]), int(shape[-1])
    n = math.prod(input_shape)
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


class Explorer:
    """The explorer's model, data, priors and cache of :class:`View` objects.

    Parameters
    ----------
    model : nn.Module
        The network; a float64 copy is used throughout.
    images : Tensor
        ``(N, *input_shape)`` the inputs a user can pick, within ``bounds``.
    labels : Tensor, optional
        ``(N,)`` their classes.
    priors : dict
        ``"gaussian"`` (:class:`GaussianPrior`) and optionally ``"mixture"``.
    decoder : nninv.learned.Decoder, optional
    bounds : (float, float)
        The input domain; ``(0, 1)`` for images.
    n_directions : int
        Sliders per view.
    cache_size : int
        Views kept (least recently used dropped first).
    """

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor | None = None,
        priors: dict[str, Prior] | None = None,
        decoder: Any = None,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        n_directions: int = 6,
        cache_size: int = 32,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NNInvError(f"expected a torch.nn.Module, got {type(model).__name__}")
        with eval_mode(model):
            try:
                chain = analyse(model, input_shape)
            except NNInvError:
                if input_shape is not None:
                    raise
                chain = analyse(model, tuple(images.shape[1:]))
        self.input_shape = chain.input_shape
        self.output_shape = chain.output_shape
        self.n = math.prod(self.input_shape)
        self.m = math.prod(self.output_shape)
        self.model = copy.deepcopy(model).to(_F64).eval().requires_grad_(False)
        # the float64 copy's analysis, for the projection onto curved preimages
        self._chain64 = analyse(self.model, self.input_shape)
        X = torch.as_tensor(images).to(_F64)
        if X.ndim < 2 or X[0].numel() != self.n:
            raise NNInvError(
                f"images have shape {tuple(X.shape)}; the model takes (N, "
                f"{', '.join(map(str, self.input_shape))})"
            )
        if not bool(torch.isfinite(X).all()):
            raise NNInvError("images contain NaN or inf")
        lo, hi = bounds
        if float(X.min()) < lo or float(X.max()) > hi:
            raise NNInvError(
                f"images range over [{float(X.min()):.3g}, {float(X.max()):.3g}], outside the "
                f"bounds [{lo:g}, {hi:g}] the explorer draws in"
            )
        self.images = X.reshape(len(X), -1)
        self.display_shape = _display_shape(tuple(X.shape[1:]), self.input_shape)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.priors: dict[str, Prior] = dict(priors or {})
        self.decoder = decoder
        self.bounds = (float(lo), float(hi))
        self.n_directions = int(n_directions)
        self._cache: OrderedDict[str, View] = OrderedDict()
        self._cache_size = int(cache_size)
        self._null_cache: dict[str, tuple[Tensor, list[float]]] = {}
        self.lock = threading.RLock()
        self._warm = False
        #: True when the preimage is a polytope (one affine layer): exact projections.
        self.exact = self._is_polytope()

    def _is_polytope(self) -> bool:
        chain = self._chain64
        try:
            y = self.output(self.images[:1])[0]
            return core_kind(exact_output(chain, y).core) == "linear"
        except NNInvError:
            return False

    def attach_decoder(self, decoder: Any) -> None:
        """Add a decoder trained after the server started: later views show its row, and
        the views already built get it too (a page reload lists it)."""
        with self.lock:
            self.decoder = decoder
            for view in self._cache.values():
                view.inversions.update(self._inversions(view.y, only="decoder"))

    # --- outputs ----------------------------------------------------------------------

    def output(self, x: Tensor) -> Tensor:
        """``f(x)`` of flat inputs ``(k, n)`` as ``(k, m)`` float64."""
        with torch.no_grad():
            return self.model(x.reshape(-1, *self.input_shape)).reshape(x.shape[0], -1)

    def flat(self, values: list[float], what: str) -> Tensor:
        """A list from a request as one flat input ``(n,)``; its length is checked."""
        if len(values) != self.n:
            raise NNInvError(f"{what} has {len(values)} values; the model takes {self.n}")
        return torch.tensor(values, dtype=_F64)

    # --- views ------------------------------------------------------------------------

    def view_image(self, index: int) -> View:
        """The view of the output of image ``index``."""
        if not 0 <= index < len(self.images):
            raise NNInvError(f"image index {index} outside [0, {len(self.images)})")
        key = f"image:{index}"
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            x = self.images[index]
            label = None if self.labels is None else int(self.labels[index])
            view = self._build(key, self.output(x[None]), x, label)
            return self._remember(view)

    def view_output(self, y: list[float]) -> View:
        """The view of a typed output (checked against the output layer's range)."""
        if len(y) != self.m:
            raise NNInvError(f"output has {len(y)} values; the model gives {self.m}")
        key = "output:" + ",".join(f"{v:.17g}" for v in y)
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            view = self._build(key, torch.tensor([y], dtype=_F64), None, None)
            return self._remember(view)

    def get(self, key: str) -> View:
        """A view built before (the page sends its key back); NNInvError when unknown."""
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if key.startswith("image:") and key[6:].isdigit():
            return self.view_image(int(key[6:]))
        raise NNInvError(f"unknown view {key!r}; select an image or an output first")

    def _remember(self, view: View) -> View:
        self._cache[view.key] = view
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return view

    def _build(self, key: str, y: Tensor, image: Tensor | None, label: int | None) -> View:
        if not self.exact:
            return self._build_curved(key, y, image, label)
        lo, hi = self.bounds
        around = None if image is None else image.reshape(1, *self.input_shape)
        pre: Preimage | None = None
        pre_error = None
        bounded = True
        try:
            pre = preimage(self.model, y, bounds=(lo, hi), around=around)
            if pre.empty:
                pre_error = f"no input in [{lo:g}, {hi:g}] gives this output ({pre.reason})"
                bounded = False
                pre = preimage(self.model, y, around=around)
                if pre.empty:
                    pre = None
        except NNInvError as e:
            if "range" in str(e) or "shape" in str(e) or "outside" in str(e):
                raise
            pre, pre_error = None, str(e)
        inversions = self._inversions(y)
        directions, spread = self._directions(pre)
        return View(key, y, image, label, pre, bounded, pre_error, inversions, directions, spread)

    def _build_curved(self, key: str, y: Tensor, image: Tensor | None, label: int | None) -> View:
        # A deep net's closed-form inversions can take minutes (dense SVDs of its conv
        # blocks, projections through thousands of hidden ReLU units): a picked image
        # is a member to start from, so the view is served at once and they follow.
        later = image is not None
        inversions = self._pending() if later else self._inversions(y)
        start = image
        if start is None:
            start = next((v.x for v in inversions.values() if v.x is not None), None)
        if start is None:
            raise NNInvError("no inversion of this output succeeded; nothing to explore from")
        J = torch.autograd.functional.jacobian(
            lambda x: self.output(x[None])[0], start.clone()
        ).reshape(self.m, self.n)
        _, S, Vh = torch.linalg.svd(J, full_matrices=True)
        rank = int((S > S.max() * 1e-10).sum()) if S.numel() else 0
        N = Vh[rank:].T.contiguous()
        directions, spread = self._principal(N)
        view = View(key, y, image, label, None, True, None, inversions, directions, spread)
        view.exact = False
        view.anchor = start
        if later:
            threading.Thread(
                target=self._fill_inversions, args=(view,), name="nninv-inversions", daemon=True
            ).start()
        if not self._warm and directions.shape[1]:
            # the first Gauss-Newton projection in a process pays a one-off setup of
            # about a second; the first view pays it, not the first slider move
            with contextlib.suppress(NNInvError):
                self._project(view, start + 1e-3 * directions[:, 0])
            self._warm = True
        return view

    def _pending(self) -> dict[str, InversionView]:
        why = "computing in the background; select the image again to see it"
        return {
            name: InversionView(name, None, math.inf, False, why)
            for name, (_, prior_key) in INVERSIONS.items()
            if (prior_key is None or prior_key in self.priors)
            and (name != "decoder" or self.decoder is not None)
        }

    def _fill_inversions(self, view: View) -> None:
        done = self._inversions(view.y)
        with self.lock:
            view.inversions.update(done)

    def _inversions(self, y: Tensor, only: str | None = None) -> dict[str, InversionView]:
        out: dict[str, InversionView] = {}
        target = y.reshape(1, *self.output_shape)
        for name, (method, prior_key) in INVERSIONS.items():
            if only is not None and name != only:
                continue
            options: dict[str, Any] = {}
            prior = None
            if prior_key is not None:
                prior = self.priors.get(prior_key)
                if prior is None:
                    continue
            if method == "decoder":
                if self.decoder is None:
                    continue
                options["decoder"] = self.decoder
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NNInvWarning)
                    inv = invert(
                        self.model,
                        target,
                        method=method,
                        prior=prior,
                        input_shape=self.input_shape,
                        **options,
                    )
            except NNInvError as e:
                out[name] = InversionView(name, None, math.inf, False, str(e))
                continue
            x = inv.x.reshape(-1).to(_F64)
            out[name] = InversionView(name, x, float(inv.residual.max()), bool(inv.converged.all()))
        return out

    def _directions(self, pre: Preimage | None) -> tuple[Tensor, list[float]]:
        if pre is None or pre.dim <= 0:
            return torch.zeros(self.n, 0, dtype=_F64), []
        # one affine layer: the null space is the same for every target
        cache_key = "affine" if pre.kind == "affine" else ""
        if cache_key and cache_key in self._null_cache:
            return self._null_cache[cache_key]
        result = self._principal(pre.basis.to(_F64))
        if cache_key:
            self._null_cache[cache_key] = result
        return result

    def _principal(self, N: Tensor) -> tuple[Tensor, list[float]]:
        """The top principal directions of the Gaussian prior within span(N), scaled."""
        k = min(self.n_directions, N.shape[1])
        gauss = self.priors.get("gaussian")
        # without a Gaussian prior every direction of the null space is as likely
        if isinstance(gauss, GaussianPrior):
            S = gauss.covariance.to(_F64).reshape(self.n, self.n)
        else:
            S = torch.eye(self.n, dtype=_F64)
        M = N.T @ S @ N
        evals, evecs = torch.linalg.eigh(0.5 * (M + M.T))
        top = evals.flip(0)[:k].clamp(min=0)
        V = evecs.flip(1)[:, :k]
        D = (N @ V) * top.sqrt()
        return D, [float(v) for v in top.sqrt()]

    # --- interactions -----------------------------------------------------------------

    def slide(self, view: View, base: str, coefs: list[float]) -> tuple[Tensor, Tensor]:
        """The member of the preimage closest to ``base + D t``; returns it and the raw move.

        On a curved set (``view.exact`` False) a move the Gauss-Newton projection
        cannot bring back is halved (up to four times); the raw move returned is
        the one projected.
        """
        k = view.directions.shape[1]
        if len(coefs) != k:
            raise NNInvError(f"this view has {k} sliders; got {len(coefs)} positions")
        if view.exact and view.pre is None:
            raise NNInvError(f"no preimage to move in: {view.pre_error}")
        x0 = view.base(base)
        t = torch.tensor(coefs, dtype=_F64)
        raw = x0 + view.directions @ t if k else x0.clone()
        with self.lock:
            if view.exact:
                return self._project(view, raw), raw
            # a curved set: far moves along the tangent may leave the projection's reach;
            # then shorter moves in the same direction are tried
            for _ in range(4):
                try:
                    return self._project(view, raw), raw
                except NNInvError:
                    t = t / 2
                    raw = x0 + view.directions @ t
            return self._project(view, raw), raw

    def project(self, view: View, x: Tensor) -> Tensor:
        """The member of the view's preimage closest to ``x`` (a drawing), in L2."""
        if view.exact and view.pre is None:
            raise NNInvError(f"no preimage to project onto: {view.pre_error}")
        with self.lock:
            if view.exact:
                return self._project(view, x)
            # a curved set: a drawing beyond the projection's reach is pulled part of the
            # way back to the view's starting member first
            anchor = view.image if view.image is not None else view.anchor
            error: NNInvError | None = None
            for w in (1.0, 0.5, 0.25):
                try:
                    return self._project(view, w * x + (1 - w) * anchor)
                except NNInvError as e:
                    error = e
            assert error is not None
            raise error

    def _project(self, view: View, x: Tensor) -> Tensor:
        lo, hi = self.bounds
        if not view.exact:
            p = project_onto(
                self._chain64,
                view.y.reshape(1, *self.output_shape),
                x.clamp(lo, hi)[None],
                tol=1e-8,
                bounds=(lo, hi),
                max_iter=30,
            )
            # the steps' own measure of the violation (before the last activation) decides
            if not bool(p.violation[0] <= max(float(p.goal[0]), 1e-9)):
                raise NNInvError(
                    f"the Gauss-Newton projection stalled at residual {float(p.violation[0]):.3g}; "
                    "this point is too far from the preimage"
                )
            return p.x[0]
        assert view.pre is not None
        if (
            view.bounded
            and bool(((x >= lo) & (x <= hi)).all())
            and bool(view.pre.contains(x[None], tol=1e-9)[0])
        ):
            return x.clone()
        return view.pre.project(x.reshape(1, *self.input_shape)).reshape(-1)

    def closest(
        self, x0: Tensor, label: int | None, norm: str, time_limit: float = 10.0
    ) -> tuple[Any, int]:
        """:func:`nninv.closest` from the flat input ``x0`` to another class.

        ``label`` None picks the runner-up class of ``x0``'s output.
        Returns the :class:`~nninv.Closest` and the class asked for.
        """
        lo, hi = self.bounds
        if not bool(((x0 >= lo) & (x0 <= hi)).all()):
            raise NNInvError(
                f"the start leaves the bounds [{lo:g}, {hi:g}]; closest needs a start inside them"
            )
        out = self.output(x0[None])[0]
        own = int(out.argmax())
        if label is None:
            label = int(out.topk(2).indices[1]) if out.numel() > 1 else own
        if not 0 <= label < self.m:
            raise NNInvError(f"class {label} outside [0, {self.m})")
        if label == own:
            raise NNInvError(f"the start is already of class {label}; pick another class")
        with self.lock:
            res = closest(
                self.model,
                x0.reshape(1, *self.input_shape),
                ClassTarget(label),
                norm=norm,
                time_limit=time_limit,
                bounds=self.bounds,
            )
        return res, label
