"""FLOP counting: the analytic tree walk, measured counters (fvcore, FlopCounterMode), reconciliation.

Only :mod:`.analytic` is imported here; the measured counters import fvcore lazily.
"""

from .analytic import (
    BACKWARD_MULTIPLIERS,
    FlopNode,
    FlopRow,
    flop_rows,
    flop_tree,
    is_analytic,
    training_breakdown,
)

__all__ = [
    "BACKWARD_MULTIPLIERS",
    "FlopNode",
    "FlopRow",
    "flop_rows",
    "flop_tree",
    "is_analytic",
    "training_breakdown",
]
