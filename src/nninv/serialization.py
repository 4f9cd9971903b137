"""The one file convention of every object nninv saves: safetensors with a format and a version.

A saved decoder, conditional flow or bijective classifier is one safetensors
file (tensors only: nothing is unpickled on reading) whose metadata holds
``format`` (the object's name, e.g. ``"nninv.Decoder"``), ``version`` (an
integer as text) and the object's own JSON entries. :func:`write` writes that
file with the user's umask (the bytes go through ``open``, not safetensors'
own writer, which creates files readable by their owner only); :func:`read`
checks the format and the version before it returns the tensors, with errors
that name the file. Files of the first bijective classifiers wrote
``format = "nninv.BijectiveClassifier/1"`` and no ``version``: :func:`file_format`
reads that spelling as format ``"nninv.BijectiveClassifier"``, version 1.
"""

from __future__ import annotations

__all__ = ["file_format", "read", "read_metadata", "write"]

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from torch import Tensor

from .errors import NNInvError


def write(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    format: str,
    version: int,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` and ``{"format", "version", **metadata}`` as one safetensors file.

    The tensors are detached, moved to the CPU and made contiguous; the folder
    is created if needed; the file gets the permissions of any file the user
    creates (their umask). Returns the path written.
    """
    from safetensors.torch import save

    path = Path(path)
    meta = {"format": format, "version": str(version), **(metadata or {})}
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_metadata(path: str | os.PathLike[str], what: str) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors.

    Raises
    ------
    NNInvError
        If the file does not exist or is not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise NNInvError(f"{what} file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types on damaged bytes
        raise NNInvError(
            f"{what} file '{path}' is not a readable safetensors file "
            f"({type(e).__name__}: {e}): the file is corrupt or truncated"
        ) from None


def file_format(meta: Mapping[str, str]) -> tuple[str, str | None]:
    """``(format, version)`` of a file's metadata; the old ``"name/1"`` spelling is version 1."""
    name = str(meta.get("format", ""))
    version = meta.get("version")
    if version is None and "/" in name:
        name, version = name.split("/", 1)
    return name, version


def read(
    path: str | os.PathLike[str],
    format: str,
    versions: Collection[int],
    what: str,
) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The metadata and tensors of a file :func:`write` wrote as ``format``.

    Parameters
    ----------
    path : path-like
        The file.
    format : str
        The format it must have (``"nninv.Decoder"``).
    versions : collection of int
        The versions this nninv reads.
    what : str
        How the messages name the object (``"decoder"``).

    Raises
    ------
    NNInvError
        If the file is missing, not a readable safetensors file (corrupt or
        truncated), of another format, or of a version not in ``versions``.
    """
    from safetensors import safe_open

    path = Path(path)
    meta = read_metadata(path, what)
    name, version = file_format(meta)
    if name != format:
        raise NNInvError(
            f"'{path}' is a safetensors file but not an nninv {what} (format "
            f"{meta.get('format')!r}, expected {format!r})"
        )
    if version not in {str(v) for v in versions}:
        raise NNInvError(
            f"{what} file '{path}' has version {version!r}; this nninv reads version(s) "
            f"{', '.join(map(str, sorted(versions)))}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise NNInvError(
            f"{what} file '{path}' is not a readable safetensors file "
            f"({type(e).__name__}: {e}): the file is corrupt or truncated"
        ) from None
    return meta, tensors
