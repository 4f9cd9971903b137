"""HiGHS (highspy), the solver behind every LP and MILP of nninv, made quiet.

:func:`quiet_highs` is the one place a ``highspy.Highs`` is created: the first
one a process makes prints a banner from C++ to file descriptor 1, which would
land in the middle of the command line's tables. Solver-wide options that HiGHS
fixes at its first run (``threads``) are left alone: setting them on a later
object makes its runs end with the status "Not Set".
"""

from __future__ import annotations

__all__ = ["quiet_highs"]

import os
import sys

import highspy


def quiet_highs() -> highspy.Highs:
    """A ``highspy.Highs`` with its output off, made with file descriptor 1 silenced.

    Examples
    --------
    >>> h = quiet_highs()
    >>> h.getOptionValue("output_flag")
    False
    """
    saved: int | None
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        saved = None
    try:
        if saved is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
    return h
