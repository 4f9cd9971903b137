"""``nninv.invert``: find inputs that a model maps to given outputs.

This module does the work common to every method: it checks the target
against the model (shape, finite values, the output layer's range), picks the
computation dtype and device, calls the registered method, and measures the
residual of what came back by running the model itself, so that a reported
residual is never the method's own estimate.
"""

from __future__ import annotations

__all__ = ["DEFAULT_TOL", "invert"]

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..errors import NNInvError, NNInvWarning
from ..model.chain import Chain, analyse, eval_mode, resolve_input_shape
from ..model.io import as_module
from ..model.outputs import as_output, check_range, residual_of
from ..priors import Prior
from ..result import Inversion
from ..targets import ClassTarget
from . import Problem, _set_fields, choose_method, get_method, make_options, method_options

#: Default residual tolerance for ``converged``, per dtype.
DEFAULT_TOL = {torch.float64: 1e-5, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    return model_dtype_device(model)


def invert(
    model: nn.Module,
    target: Any,
    method: str = "auto",
    prior: Prior | None = None,
    *,
    bounds: Any = None,
    x0: Any = None,
    seed: int | None = None,
    tol: float | None = None,
    input_shape: Sequence[int] | None = None,
    options: Mapping[str, Any] | Any = None,
    **kwargs: Any,
) -> Inversion:
    """Find inputs ``x`` with ``model(x) = target``.

    Parameters
    ----------
    model : torch.nn.Module or a fitted scikit-learn MLPClassifier/MLPRegressor
        The network; evaluated in eval mode (its mode is restored afterwards).
    target : Tensor, ndarray or ClassTarget
        Outputs shaped ``(N, *output_shape)`` (one unbatched output is accepted),
        or a :class:`~nninv.ClassTarget`.
    method : str
        A registered method: ``"pinv"`` (minimum-norm, layer by layer),
        ``"analytic"`` (the prior's conditional mean, layer by layer),
        ``"optimize"`` (any differentiable model, when installed), ``"bijective"``
        (the exact inverse of a model invertible by construction, e.g.
        :class:`nninv.invertible.BijectiveClassifier`), or ``"auto"``:
        the first method in the order ``"bijective"`` (such a model, an exact
        target), ``"pinv"`` (no prior) or ``"analytic"`` (a prior that conditions
        in closed form; both need an exact target and a chain of known layers),
        ``"optimize"``, ``"decoder"`` that takes every argument and option given
        (:func:`nninv.methods.choose_method`): ``bounds`` or ``x0`` rule out the
        closed forms, ``decoder=`` picks ``"decoder"``.
    prior : Prior, optional
        A prior over inputs, e.g. ``GaussianPrior.fit(X)``.
    bounds : (float, float) or (Tensor, Tensor), optional
        ``lo <= x <= hi`` elementwise, held exactly (methods ``"optimize"`` and
        ``"decoder"``; another method named explicitly raises).
    x0 : Tensor, optional
        Starting inputs shaped ``(N, *input_shape)`` (methods ``"optimize"`` and
        ``"decoder"``); its shape gives the input shape of a model that does not
        tell it.
    seed : int, optional
        Seeds the random draws of a method that makes some (``"optimize"``'s
        restarts and retries; default 0); the other methods draw nothing.
    tol : float, optional
        Residual tolerance for ``converged``; defaults to :data:`DEFAULT_TOL`
        for the computation dtype (1e-5 in float64, 1e-4 in float32).
    input_shape : sequence of int, optional
        The input shape without the batch dimension, when the model does not
        tell it (defaults to the prior's ``event_shape``, the ``decoder``
        option's ``input_shape``, or ``x0.shape[1:]``).
    options : dict or the method's options dataclass, optional
        The method's own options, e.g. ``{"restarts": 4}`` or
        ``OptimizeOptions(restarts=4)`` (see :func:`nninv.methods.method_options`);
        validated before the method runs, an unknown name raises
        :class:`~nninv.NNInvError` listing the valid ones.
    **kwargs
        Method options as keywords, merged with ``options`` (``restarts=4`` is
        ``options={"restarts": 4}``); a name given in both raises.

    Returns
    -------
    Inversion
        ``x`` ``(N, *input_shape)``, ``residual`` ``(N,)`` = ``max |f(x) - y|`` measured by
        running the model, ``converged`` (N,), ``iterations``, ``method``, ``info``.

    Raises
    ------
    NNInvError
        For a target of the wrong shape, NaN/inf, values outside the output
        layer's range, an unknown method or option, or a layer the method cannot
        handle (named with its index).

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> f = nn.Sequential(nn.Linear(784, 10), nn.Sigmoid()).double()
    >>> x = torch.rand(3, 784, dtype=torch.float64)
    >>> inv = invert(f, f(x), method="pinv")
    >>> bool(inv.converged.all()), float(inv.residual.max()) < 1e-12
    (True, True)
    """
    model = as_module(model)
    _check_prior(prior)
    mdtype, device = _model_dtype_device(model)
    given = _gather(options, kwargs, {"bounds": bounds, "x0": x0})
    input_shape = _input_shape(model, prior, given, input_shape)
    with eval_mode(model):
        chain = analyse(model, input_shape)
        in_shape, out_shape = chain.input_shape, chain.output_shape
        _check_prior_shape(prior, in_shape)
        tgt, dtype, moved = _as_target(target, chain, mdtype, device)
        if method == "auto":
            method = choose_method(
                chain, tgt, prior, options=options if _is_instance(options) else given
            )
        fn = get_method(method)
        opts = _method_options(method, options, given, seed)
        tol = float(tol) if tol is not None else DEFAULT_TOL.get(dtype, 1e-4)
        if tol <= 0 or not math.isfinite(tol):
            raise NNInvError(f"tol must be positive and finite, got {tol}")
        problem = Problem(model, tgt, prior, in_shape, out_shape, dtype, device, tol, opts, chain)
        sol = fn(problem)
        x = sol.x.detach()
        if tuple(x.shape[1:]) != in_shape:
            raise AssertionError(f"method {method!r} returned shape {tuple(x.shape)}")
        with torch.no_grad():
            out = model(x.to(mdtype))
        residual = residual_of(tgt, out.to(dtype), chain).to(dtype)
        # a class target is met only when the model, run in its own dtype, puts the sample
        # in the class (shortfall 0): a sample on the boundary is not converged
        ok = residual == 0 if isinstance(tgt, ClassTarget) else residual <= tol
        ok &= torch.isfinite(residual)
        reasons: list[str | None] = list(sol.reasons) if sol.reasons else [None] * len(x)
        if sol.ok is not None:
            ok &= sol.ok.to(ok.device)
        all_ok = bool(ok.all())
        if not all_ok:
            _explain(reasons, ok, residual, tgt, mdtype, tol)
        info = {"tol": tol, "reasons": reasons, **sol.info}
        if moved:
            info["edge_values_moved"] = moved
    n_bad = 0 if all_ok else int((~ok).sum())
    if n_bad:
        first = next(r for r in reasons if r is not None)
        warnings.warn(
            f"{n_bad} of {len(x)} samples did not converge: {first}", NNInvWarning, stacklevel=2
        )
    return Inversion(x, residual, ok, sol.iterations, method, info, reasons)


def _check_prior(prior: Any) -> None:
    """Raise unless ``prior`` is None, a :class:`Prior` or has a ``log_prob`` method."""
    if prior is not None and not isinstance(prior, Prior):
        if not hasattr(prior, "log_prob"):
            raise NNInvError(
                f"prior must be an nninv Prior or have a log_prob method, got "
                f"{type(prior).__name__}"
            )


def _input_shape(
    model: nn.Module, prior: Any, given: dict[str, Any], input_shape: Sequence[int] | None
) -> Sequence[int] | None:
    """A model that does not tell its input shape takes the prior's, the decoder's, or x0's."""
    start = given.get("x0", given.get("start"))
    known = (
        getattr(prior, "event_shape", None)
        or getattr(given.get("decoder"), "input_shape", None)
        or _shape_of(start)
    )
    if input_shape is None and known is not None:
        try:
            resolve_input_shape(model, None)
        except NNInvError:
            input_shape = tuple(known)
    return input_shape


def _check_prior_shape(prior: Any, in_shape: tuple[int, ...]) -> None:
    """Raise if the prior's event holds another number of values than the model input."""
    if prior is not None and hasattr(prior, "event_shape"):
        if math.prod(prior.event_shape) != math.prod(in_shape):
            raise NNInvError(
                f"the prior is over {tuple(prior.event_shape)} "
                f"({math.prod(prior.event_shape)} values) but the model input is "
                f"{in_shape} ({math.prod(in_shape)} values)"
            )


def _as_target(
    target: Any, chain: Chain, mdtype: torch.dtype, device: torch.device
) -> tuple[Tensor | ClassTarget, torch.dtype, int]:
    """The checked target, the computation dtype, and how many edge values were moved."""
    out_shape = chain.output_shape
    if isinstance(target, ClassTarget):
        target.check_classes(math.prod(out_shape))
        return target, mdtype, 0
    tdtype = target.dtype if isinstance(target, Tensor) else None
    dtype = tdtype if tdtype is not None and tdtype.is_floating_point else mdtype
    y = as_output(target, out_shape, dtype, device)
    yf, moved = check_range(y.reshape(y.shape[0], -1), chain)
    return yf.reshape(y.shape), dtype, moved


def _explain(
    reasons: list[str | None],
    ok: Tensor,
    residual: Tensor,
    tgt: Tensor | ClassTarget,
    mdtype: torch.dtype,
    tol: float,
) -> None:
    """Give each sample that did not converge and has no reason yet one."""
    for i in (~ok).nonzero().flatten().tolist():
        if reasons[i] is None:
            reasons[i] = (
                f"not in the target class when the model runs it ({mdtype}), "
                f"shortfall {float(residual[i]):.3g}"
                if isinstance(tgt, ClassTarget)
                else f"residual {float(residual[i]):.3g} above tol {tol:g}"
            )


def _is_instance(options: Any) -> bool:
    """Whether ``options`` is an options dataclass instance (not a mapping or None)."""
    return dataclasses.is_dataclass(options) and not isinstance(options, type)


def _gather(options: Any, kwargs: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """The option names given, by any route, with their values (defaults left out).

    ``options`` (a mapping or an options dataclass instance), keyword options and
    the shared arguments ``bounds`` and ``x0`` that are not None; a name given by two
    routes raises.
    """
    if options is None:
        given: dict[str, Any] = {}
    elif isinstance(options, Mapping):
        given = dict(options)
    elif _is_instance(options):
        given = _set_fields(options)
    else:
        raise NNInvError(
            f"options must be a dict or a method's options dataclass, got {type(options).__name__}"
        )
    for extra in (kwargs, {k: v for k, v in shared.items() if v is not None}):
        twice = sorted(set(given) & set(extra))
        if twice:
            raise NNInvError(f"option(s) {', '.join(twice)} given twice")
        given.update(extra)
    return given


def _method_options(method: str, options: Any, given: dict[str, Any], seed: int | None) -> Any:
    """Method ``method``'s options, built and validated once (a dict for an undeclared class)."""
    cls = method_options(method)
    extra = {}
    if seed is not None:
        if "seed" in given:
            raise NNInvError("option(s) seed given twice")
        # a method that draws nothing at random honours any seed
        if cls is None or "seed" in {f.name for f in dataclasses.fields(cls)}:
            extra["seed"] = seed
    if _is_instance(options) and (cls is None or not isinstance(options, cls)):
        raise NNInvError(
            f"options {type(options).__name__} do not belong to method {method!r}"
            + (f" (its options are {cls.__name__})" if cls is not None else "")
        )
    return make_options(method, {**given, **extra})


def _shape_of(x0: Any) -> tuple[int, ...] | None:
    """``x0.shape[1:]`` for a batch of starts ``(N, *input_shape)``, else None."""
    shape = getattr(x0, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return tuple(int(s) for s in shape[1:])
