"""Argument checks shared by the modules: each raises ValueError naming the argument and value.

The checks live in :mod:`flopkit.checks` (one input-checking layer for modules, commands and the
Python API); this module keeps the modules' imports short.
"""

from __future__ import annotations

from flopkit.checks import check_eps, check_finite, check_positive_int, is_int

__all__ = ["is_int", "check_positive_int", "check_eps", "check_finite"]
