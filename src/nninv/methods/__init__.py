"""Inversion methods, their options and their registry.

A method is a callable taking a :class:`Problem` and returning a
:class:`Solution`; :func:`nninv.invert` does the common work around it
(checking the target, validating the options, running the model to measure the
residual, building the :class:`~nninv.Inversion`). New methods register
themselves in :data:`METHODS` with :func:`register`, together with the frozen
dataclass of their options.

Contract for a method
---------------------
- It MUST declare its options as a frozen dataclass (``register(name,
  options=...)``) whose ``__post_init__`` checks the values it can check without
  the model; :func:`nninv.invert` builds it once, before the method runs, and
  refuses a name it does not declare. A method honours the shared arguments
  ``bounds`` and ``x0`` exactly when its options declare them; ``seed`` reaches
  the methods that declare it, and the others draw nothing at random.
- It MUST return ``x`` shaped ``(N, *problem.input_shape)`` in
  ``problem.dtype`` on ``problem.device``.
- It MUST NOT claim success it has not checked: ``Solution.ok`` is False for a
  sample the method knows it failed on, with the reason in ``reasons``.
  ``invert`` ANDs it with ``residual <= tol`` measured by running the model.
- It MAY use ``problem.chain`` (the analysed model) and ``problem.prior``.
"""

from __future__ import annotations

__all__ = [
    "METHODS",
    "Problem",
    "Solution",
    "choose_method",
    "get_method",
    "make_options",
    "method_options",
    "register",
    "takes",
]

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import NNInvError
from ..model.chain import Chain, analyse
from ..priors import Prior
from ..targets import ClassTarget

_O = TypeVar("_O")


@dataclass
class Problem:
    """Everything a method needs to know.

    Attributes
    ----------
    model : nn.Module
    target : Tensor or ClassTarget
        An exact target is already checked and shaped ``(N, *output_shape)``,
        with edge values moved inside the output layer's range.
    prior : Prior or None
    input_shape, output_shape : tuple of int
    dtype, device
        Of the computation and of the returned ``x``.
    tol : float
        Residual tolerance for ``converged``.
    options : dataclass instance or dict
        The method's options, already validated by :func:`make_options` when
        :func:`nninv.invert` built the problem; a dict (of unchecked names) for a
        problem built by hand or a method registered without an options class:
        :meth:`options_as` checks it.
    """

    model: nn.Module
    target: Tensor | ClassTarget
    prior: Prior | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    tol: float
    options: Any = field(default_factory=dict)
    _chain: Chain | None = None

    @property
    def n(self) -> int:
        t = self.target
        return len(t) if isinstance(t, ClassTarget) else int(t.shape[0])

    @property
    def chain(self) -> Chain:
        if self._chain is None:
            self._chain = analyse(self.model, self.input_shape)
        return self._chain

    def options_as(self, cls: type[_O]) -> _O:
        """The options as an instance of ``cls``, validating a dict of options."""
        if isinstance(self.options, cls):
            return self.options
        return _build(cls, dict(self.options), _name_of(cls))

    def take_options(self, **defaults: Any) -> dict[str, Any]:
        """For a method registered without an options class: the options as a dict.

        Defaults are filled in; an unknown name raises :class:`~nninv.NNInvError`.
        """
        opts = dict(self.options)
        unknown = sorted(set(opts) - set(defaults))
        if unknown:
            raise NNInvError(_unknown(unknown, sorted(defaults), "this method"))
        return {**defaults, **opts}


@dataclass
class Solution:
    """What a method returns; see the module's contract."""

    x: Tensor
    iterations: int = 0
    ok: Tensor | None = None
    reasons: list[str | None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Problem], Solution]

#: Registered methods by name.
METHODS: dict[str, Method] = {}

#: The options dataclass of each registered method that declares one.
_OPTIONS: dict[str, type] = {}


def register(name: str, options: type | None = None) -> Callable[[Method], Method]:
    """Decorator registering a method under ``name``, with its options dataclass.

    ``options`` is a frozen dataclass whose fields are the method's options, with
    their defaults; None (for methods written before options were declared) hands
    the method a dict it checks itself with :meth:`Problem.take_options`.
    """
    if options is not None and not (dataclasses.is_dataclass(options) and _frozen(options)):
        raise NNInvError(f"the options of method {name!r} must be a frozen dataclass")

    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        if options is not None:
            _OPTIONS[name] = options
        else:
            _OPTIONS.pop(name, None)
        return fn

    return deco


def get_method(name: str) -> Method:
    """The method registered as ``name``; ValueError (NNInvError) listing valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise NNInvError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}") from None


def method_options(name: str) -> type | None:
    """The options dataclass of method ``name`` (None for a method that declares none)."""
    get_method(name)
    return _OPTIONS.get(name)


def takes(name: str, option: str) -> bool:
    """Whether method ``name`` declares ``option`` (e.g. ``takes("pinv", "bounds")``)."""
    cls = method_options(name)
    return cls is not None and option in _fields(cls)


def make_options(name: str, options: Mapping[str, Any] | Any = None, **more: Any) -> Any:
    """Method ``name``'s options dataclass, built from ``options`` and ``more`` and validated.

    ``options`` is a mapping of option names, or an instance of the method's own
    options class; ``more`` adds names (a name given twice is an error). An
    unknown name raises :class:`~nninv.NNInvError` listing the valid ones; the
    class's ``__post_init__`` checks the values. For a method registered without
    an options class the merged dict is returned unchecked.
    """
    cls = method_options(name)
    given: dict[str, Any]
    if options is None:
        given = {}
    elif isinstance(options, Mapping):
        given = dict(options)
    elif dataclasses.is_dataclass(options) and not isinstance(options, type):
        if cls is None or not isinstance(options, cls):
            raise NNInvError(
                f"options {type(options).__name__} do not belong to method {name!r}"
                + (f" (its options are {cls.__name__})" if cls is not None else "")
            )
        given = _set_fields(options)
    else:
        raise NNInvError(
            f"options must be a dict or the method's options dataclass, got "
            f"{type(options).__name__}"
        )
    twice = sorted(set(given) & set(more))
    if twice:
        raise NNInvError(f"option(s) {', '.join(twice)} given twice")
    given.update(more)
    if cls is None:
        return given
    return _build(cls, given, name)


def choose_method(
    model: Any,
    target: Any,
    prior: Any = None,
    *,
    bounds: Any = None,
    x0: Any = None,
    options: Mapping[str, Any] | Any = None,
    input_shape: tuple[int, ...] | None = None,
) -> str:
    """The method ``method="auto"`` runs: the first of these that takes what is given.

    In order of preference: ``"bijective"`` for a model invertible by construction
    (see :func:`nninv.methods.bijective.is_bijective`) and an exact target; for an
    exact target and a chain of layers with a closed form, ``"pinv"`` without a
    prior and ``"analytic"`` with a prior that conditions in closed form; then
    ``"optimize"``, then ``"decoder"``. A method is skipped when it does not
    declare every option given, nor ``bounds`` or ``x0`` when they are not None:
    so ``bounds=(0, 1)`` turns an exact target on the seed's model from ``"pinv"``
    to ``"optimize"``, and ``decoder=dec`` picks ``"decoder"``.

    Parameters
    ----------
    model : nn.Module or nninv.model.chain.Chain
        The model, or its analysed chain.
    target : Tensor, ndarray or ClassTarget
        Only its kind matters (a class target or exact outputs).
    prior : Prior, optional
    bounds, x0 : optional
        Whether they are given (not None) is what matters.
    options : dict or an options dataclass, optional
        The method options given; an instance of a method's options class picks
        that method.
    input_shape : tuple of int, optional
        For a model that does not tell its input shape.

    Returns
    -------
    str
        A registered method name.

    Raises
    ------
    NNInvError
        When no method takes every option given (the message lists what each
        candidate takes).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> f = nn.Sequential(nn.Linear(6, 2), nn.Sigmoid())
    >>> y = torch.full((1, 2), 0.5)
    >>> choose_method(f, y), choose_method(f, y, bounds=(0, 1))
    ('pinv', 'optimize')
    """
    from .bijective import is_bijective

    if options is not None and not isinstance(options, Mapping):
        for name, cls in _OPTIONS.items():
            if type(options) is cls:
                return name
        raise NNInvError(
            f"options {type(options).__name__} belong to no registered method; give a dict "
            "or a method's options class"
        )
    need = set(options or ())
    need |= {k for k, v in (("bounds", bounds), ("x0", x0)) if v is not None}
    chain = model if isinstance(model, Chain) else analyse(model, input_shape)
    exact = not isinstance(target, ClassTarget)
    order = []
    if exact and is_bijective(chain.model):
        order.append("bijective")
    if exact and not chain.unsupported:
        if prior is None:
            order.append("pinv")
        elif type(prior).posterior is not Prior.posterior:
            order.append("analytic")
    order += ["optimize", "decoder"]
    order = [m for m in order if m in METHODS]
    for name in order:
        declared = _OPTIONS.get(name)
        if need <= (_fields(declared) if declared is not None else need):
            return name
    takes_ = "; ".join(
        f"{m}: {', '.join(sorted(_fields(_OPTIONS[m]))) or 'none'}" for m in order if m in _OPTIONS
    )
    raise NNInvError(
        f"no method takes {', '.join(sorted(need))} for this model and target "
        f"(method='auto' tried {', '.join(order)}; options by method: {takes_})"
    )


# --- helpers -----------------------------------------------------------------------------------


def _frozen(cls: Any) -> bool:
    """Whether the dataclass ``cls`` was declared ``frozen=True``."""
    params: Any = getattr(cls, "__dataclass_params__", None)
    return params.frozen


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _name_of(cls: type) -> str:
    return next((name for name, c in _OPTIONS.items() if c is cls), cls.__name__)


def _set_fields(options: Any) -> dict[str, Any]:
    """The fields of an options instance that differ from their defaults."""
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        try:
            same = v is f.default or (type(v) is type(f.default) and bool(v == f.default))
        except (RuntimeError, TypeError, ValueError):  # tensors compare elementwise
            same = False
        if not same:
            out[f.name] = v
    return out


def _unknown(names: list[str], valid: list[str], who: str) -> str:
    shared = [n for n in names if n in ("bounds", "x0")]
    if shared:
        can = sorted(m for m, c in _OPTIONS.items() if shared[0] in _fields(c))
        return (
            f"{who} does not take {shared[0]} (it cannot honour it); methods that do: "
            f"{', '.join(can)}"
        )
    what = f"valid: {', '.join(valid)}" if valid else "it takes none"
    return f"unknown option(s) {', '.join(names)} for {who}; {what}"


def _build(cls: type[_O], given: dict[str, Any], name: str) -> _O:
    valid = sorted(_fields(cls))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise NNInvError(_unknown(unknown, valid, f"method {name!r}"))
    return cls(**given)


# Importing the implementations registers them.
from . import analytic, bijective, decoder, optimize, pinv  # noqa: E402, F401
