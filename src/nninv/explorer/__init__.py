"""``nninv explore``: an interactive web page for moving through a preimage.

The page (plain HTML, CSS and JavaScript in ``static/``, served by a local
FastAPI app) shows a picked image's or a typed output's inversions under each
prior, sliders along the preimage's principal directions that leave ``f(x)``
fixed, a drawing canvas projected onto the preimage, and the closest input of
another class with its certified distance. :class:`Explorer` holds the
server-side state (per-target views computed once and cached);
:func:`create_app` wraps it in the web app; :func:`default_explorer` trains
the seed's model on the embedded digits so that it works with no files.
The web part needs the ``explorer`` extra: ``pip install 'nninv[explorer]'``.
"""

from __future__ import annotations

__all__ = ["Explorer", "View", "create_app", "default_explorer", "explorer_for", "serve"]

import threading
from typing import Any

from ._setup import default_explorer, explorer_for
from ._state import Explorer, View


def create_app(explorer: Explorer, *, title: str = "nninv explorer") -> Any:
    """The FastAPI app serving ``explorer`` (see :mod:`nninv.explorer.app`)."""
    from .app import create_app as _create

    return _create(explorer, title=title)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


def busy() -> bool:
    """Whether an explorer background thread (an inversion, the decoder's training) runs."""
    return any(t.name.startswith("nninv-") and t.is_alive() for t in threading.enumerate())
