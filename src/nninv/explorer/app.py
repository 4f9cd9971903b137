"""The explorer's web app: a FastAPI application over an :class:`~nninv.explorer.Explorer`.

Routes: ``GET /`` and ``/static/*`` serve the page (plain HTML, CSS and
JavaScript shipped in the package, nothing from a network); ``GET /api/info``
describes the model and data; ``POST /api/select``, ``/api/slide``,
``/api/project`` and ``/api/closest`` are the interactions. Every request body
is a pydantic model (finite numbers, ranges, lengths); a request that fails
validation, or that the library refuses (an output outside the model's range,
a vector of the wrong length), is answered with HTTP 422 and a ``detail`` that
says what was wrong. The app reads no file: the model and data are given to
:func:`create_app` by the caller (``nninv explore`` names them on its command
line).
"""

from __future__ import annotations

__all__ = ["create_app"]

import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import NNInvError
from ._state import Explorer, View

#: Finite numbers only: NaN and inf fail validation (HTTP 422).
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: Slider positions, in prior standard deviations.
SliderPos = Annotated[float, Field(allow_inf_nan=False, ge=-10.0, le=10.0)]
_MAX_VALUES = 1 << 20

_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelectRequest(_Body):
    """Pick a test image by index, or type an output vector (exactly one of the two)."""

    image: Annotated[int, Field(ge=0)] | None = None
    output: Annotated[list[Finite], Field(min_length=1, max_length=_MAX_VALUES)] | None = None

    @model_validator(mode="after")
    def _one(self) -> SelectRequest:
        if (self.image is None) == (self.output is None):
            raise ValueError("give exactly one of 'image' (an index) or 'output' (a vector)")
        return self


class SlideRequest(_Body):
    """Slider positions for a view, from one base (``"image"`` or an inversion's name)."""

    view: Annotated[str, Field(min_length=1, max_length=2000)]
    base: Annotated[str, Field(min_length=1, max_length=40)] = "gaussian"
    coefs: Annotated[list[SliderPos], Field(max_length=1000)]


class ProjectRequest(_Body):
    """A drawn input, to be projected onto the view's preimage."""

    view: Annotated[str, Field(min_length=1, max_length=2000)]
    x: Annotated[list[Finite], Field(min_length=1, max_length=_MAX_VALUES)]


class ClosestRequest(_Body):
    """Where to start (the view's image when ``x`` is omitted), which class, which norm."""

    view: Annotated[str, Field(min_length=1, max_length=2000)]
    x: Annotated[list[Finite], Field(min_length=1, max_length=_MAX_VALUES)] | None = None
    label: Annotated[int, Field(ge=0)] | None = None
    norm: Literal["l2", "linf", "l1"] = "l2"


def _vec(t: Any) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]


def _err(e: NNInvError) -> HTTPException:
    return HTTPException(status_code=422, detail=str(e))


class _Routes:
    """The app's route handlers over one explorer, registered by :func:`create_app`."""

    def __init__(self, explorer: Explorer, title: str) -> None:
        self.ex = explorer
        self.title = title
        self.lo, self.hi = explorer.bounds

    def check_box(self, x: Any, what: str) -> None:
        lo, hi = self.lo, self.hi
        if float(x.min()) < lo or float(x.max()) > hi:
            raise HTTPException(
                status_code=422,
                detail=f"{what} has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], "
                f"outside the bounds [{lo:g}, {hi:g}]",
            )

    def view_json(self, v: View) -> dict[str, Any]:
        ex = self.ex
        invs = []
        for inv in v.inversions.values():
            invs.append(
                {
                    "name": inv.name,
                    "x": None if inv.x is None else _vec(inv.x),
                    "output": None if inv.x is None else _vec(ex.output(inv.x[None])),
                    "residual": None if inv.x is None else inv.residual,
                    "converged": inv.converged,
                    "error": inv.error,
                }
            )
        return {
            "view": v.key,
            "y": _vec(v.y),
            "image": None if v.image is None else _vec(v.image),
            "label": v.label,
            "kind": None if v.pre is None else v.pre.kind,
            "dim": None if v.pre is None else v.pre.dim,
            "bounded": v.bounded,
            "note": v.pre_error,
            "inversions": invs,
            "sliders": len(v.spread),
            "spread": v.spread,
        }

    def get_view(self, key: str) -> View:
        try:
            return self.ex.get(key)
        except NNInvError as e:
            raise _err(e) from None

    def index(self) -> HTMLResponse:
        text = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(text.replace("{{title}}", self.title))

    def static(self, name: str) -> Response:
        if name not in _STATIC:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        data = resources.files(__package__).joinpath(f"static/{name}").read_bytes()
        return Response(data, media_type=_STATIC[name])

    def info(self) -> dict[str, Any]:
        ex = self.ex
        return {
            "title": self.title,
            "input_shape": list(ex.input_shape),
            "display_shape": list(ex.display_shape),
            "n_inputs": ex.n,
            "n_outputs": ex.m,
            "n_images": len(ex.images),
            "labels": None if ex.labels is None else [int(v) for v in ex.labels.tolist()],
            "bounds": [self.lo, self.hi],
            "inversions": [
                k
                for k in ("pinv", "gaussian", "mixture", "decoder")
                if k == "pinv" or (k == "decoder" and ex.decoder is not None) or k in ex.priors
            ],
            "model": type(ex.model).__name__,
        }

    def select(self, req: SelectRequest) -> dict[str, Any]:
        ex = self.ex
        t0 = time.perf_counter()
        try:
            if req.image is not None:
                v = ex.view_image(req.image)
            else:
                assert req.output is not None
                v = ex.view_output(req.output)
        except NNInvError as e:
            raise _err(e) from None
        out = self.view_json(v)
        out["seconds"] = time.perf_counter() - t0
        return out

    def slide(self, req: SlideRequest) -> dict[str, Any]:
        ex = self.ex
        t0 = time.perf_counter()
        v = self.get_view(req.view)
        try:
            x, raw = ex.slide(v, req.base, req.coefs)
        except NNInvError as e:
            raise _err(e) from None
        y = ex.output(x[None])
        return {
            "x": _vec(x),
            "output": _vec(y),
            "residual": float((y - v.y).abs().max()),
            "moved": float((x - raw).norm()),
            "seconds": time.perf_counter() - t0,
        }

    def project(self, req: ProjectRequest) -> dict[str, Any]:
        ex = self.ex
        t0 = time.perf_counter()
        v = self.get_view(req.view)
        try:
            x = ex.flat(req.x, "x")
        except NNInvError as e:
            raise _err(e) from None
        self.check_box(x, "x")
        try:
            p = ex.project(v, x)
        except NNInvError as e:
            raise _err(e) from None
        y_drawn, y_proj = ex.output(x[None]), ex.output(p[None])
        return {
            "x": _vec(p),
            "output": _vec(y_proj),
            "output_drawn": _vec(y_drawn),
            "residual": float((y_proj - v.y).abs().max()),
            "residual_drawn": float((y_drawn - v.y).abs().max()),
            "distance": float((p - x).norm()),
            "seconds": time.perf_counter() - t0,
        }

    def closest(self, req: ClosestRequest) -> dict[str, Any]:
        ex = self.ex
        t0 = time.perf_counter()
        v = self.get_view(req.view)
        try:
            x0 = v.base("image") if req.x is None else ex.flat(req.x, "x")
            res, label = ex.closest(x0, req.label, req.norm)
        except NNInvError as e:
            raise _err(e) from None
        found = res.x is not None
        return {
            "label": label,
            "status": res.status,
            "distance": res.distance,
            "bound": res.bound,
            "norm": res.norm,
            "x": _vec(res.x) if found else None,
            "output": _vec(ex.output(res.x.reshape(1, -1))) if found else None,
            "seconds": time.perf_counter() - t0,
        }


def _invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
    # the offending input is left out: it may be NaN, which JSON cannot carry
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": errors})


def _nninv_error(_request: Any, exc: NNInvError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": str(exc)})


def create_app(explorer: Explorer, *, title: str = "nninv explorer") -> FastAPI:
    """The FastAPI application serving ``explorer``.

    Parameters
    ----------
    explorer : Explorer
        The model, data and priors; its views are built on the first request
        for each target and cached.
    title : str
        Shown in the page's header.

    Returns
    -------
    fastapi.FastAPI
    """
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    routes = _Routes(explorer, title)
    app.get("/", response_class=HTMLResponse)(routes.index)
    app.get("/static/{name}")(routes.static)
    app.get("/api/info")(routes.info)
    app.post("/api/select")(routes.select)
    app.post("/api/slide")(routes.slide)
    app.post("/api/project")(routes.project)
    app.post("/api/closest")(routes.closest)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(NNInvError)(_nninv_error)
    return app
