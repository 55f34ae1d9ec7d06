"""Argument checks shared by the modules: each raises ValueError naming the argument and value."""

from __future__ import annotations

__all__ = ["is_int", "check_positive_int"]


def is_int(value: object) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError("{name} must be a positive integer, got {value!r}")`` unless ``value > 0``."""
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
