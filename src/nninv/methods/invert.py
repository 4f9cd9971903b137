"""``nninv.invert``: find inputs that a model maps to given outputs.

This module does the work common to every method: it checks the target
against the model (shape, finite values, the output layer's range), picks the
computation dtype and device, calls the registered method, and measures the
residual of what came back by running the model itself, so that a reported
residual is never the method's own estimate.
"""

from __future__ import annotations

__all__ = ["DEFAULT_TOL", "invert"]

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import model_dtype_device
from ..errors import NNInvError, NNInvWarning
from ..model.chain import analyse, eval_mode, resolve_input_shape
from ..model.io import as_module
from ..model.outputs import as_output, check_range, residual_of
from ..priors import Prior
from ..result import Inversion
from ..targets import ClassTarget
from . import Problem, get_method
from .bijective import is_bijective

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
    tol: float | None = None,
    input_shape: Sequence[int] | None = None,
    **options: Any,
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
        ``"bijective"`` for such a model and an exact target, ``"analytic"`` with a
        prior that conditions in closed form on a chain of known layers, ``"pinv"``
        without a prior, otherwise ``"optimize"``.
    prior : Prior, optional
        A prior over inputs, e.g. ``GaussianPrior.fit(X)``.
    tol : float, optional
        Residual tolerance for ``converged``; defaults to :data:`DEFAULT_TOL`
        for the computation dtype (1e-5 in float64, 1e-4 in float32).
    input_shape : sequence of int, optional
        The input shape without the batch dimension, when the model does not
        tell it (defaults to the prior's ``event_shape``, or the ``decoder``
        option's ``input_shape``).
    **options
        Passed to the method; unknown names raise :class:`~nninv.NNInvError`.

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
    if prior is not None and not isinstance(prior, Prior):
        if not hasattr(prior, "log_prob"):
            raise NNInvError(
                f"prior must be an nninv Prior or have a log_prob method, got "
                f"{type(prior).__name__}"
            )
    mdtype, device = _model_dtype_device(model)
    # a model that does not tell its input shape takes the prior's, or the decoder's
    known = getattr(prior, "event_shape", None) or getattr(
        options.get("decoder"), "input_shape", None
    )
    if input_shape is None and known is not None:
        try:
            resolve_input_shape(model, None)
        except NNInvError:
            input_shape = tuple(known)
    with eval_mode(model):
        chain = analyse(model, input_shape)
        in_shape, out_shape = chain.input_shape, chain.output_shape
        if prior is not None and hasattr(prior, "event_shape"):
            if math.prod(prior.event_shape) != math.prod(in_shape):
                raise NNInvError(
                    f"the prior is over {tuple(prior.event_shape)} "
                    f"({math.prod(prior.event_shape)} values) but the model input is "
                    f"{in_shape} ({math.prod(in_shape)} values)"
                )
        if isinstance(target, ClassTarget):
            dtype = mdtype
            target.check_classes(math.prod(out_shape))
            tgt: Tensor | ClassTarget = target
            moved = 0
        else:
            tdtype = target.dtype if isinstance(target, Tensor) else None
            dtype = tdtype if tdtype is not None and tdtype.is_floating_point else mdtype
            y = as_output(target, out_shape, dtype, device)
            yf, moved = check_range(y.reshape(y.shape[0], -1), chain)
            y = yf.reshape(y.shape)
            tgt = y
        if method == "auto":
            method = _auto_method(chain, prior, tgt)
        fn = get_method(method)
        tol = float(tol) if tol is not None else DEFAULT_TOL.get(dtype, 1e-4)
        if tol <= 0 or not math.isfinite(tol):
            raise NNInvError(f"tol must be positive and finite, got {tol}")
        problem = Problem(
            model, tgt, prior, in_shape, out_shape, dtype, device, tol, dict(options), chain
        )
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
            for i in (~ok).nonzero().flatten().tolist():
                if reasons[i] is None:
                    reasons[i] = (
                        f"not in the target class when the model runs it ({mdtype}), "
                        f"shortfall {float(residual[i]):.3g}"
                        if isinstance(tgt, ClassTarget)
                        else f"residual {float(residual[i]):.3g} above tol {tol:g}"
                    )
        info = {"tol": tol, "reasons": reasons, **sol.info}
        if moved:
            info["edge_values_moved"] = moved
    n_bad = 0 if all_ok else int((~ok).sum())
    if n_bad:
        first = next(r for r in reasons if r is not None)
        warnings.warn(
            f"{n_bad} of {len(x)} samples did not converge: {first}", NNInvWarning, stacklevel=2
        )
    return Inversion(x, residual, ok, sol.iterations, method, info)


def _auto_method(chain: Any, prior: Prior | None, target: Any) -> str:
    if is_bijective(chain.model) and not isinstance(target, ClassTarget):
        return "bijective"
    closed = not chain.unsupported and not isinstance(target, ClassTarget)
    if closed and prior is None:
        return "pinv"
    if closed and type(prior).posterior is not Prior.posterior:
        return "analytic"
    return "optimize"
