"""FLOP counting: the analytic tree walk, measured counters (fvcore, FlopCounterMode), reconciliation.

Only :mod:`.analytic` is imported here; the measured counters import fvcore lazily.
"""

from .analytic import FlopNode, FlopRow, flop_rows, flop_tree, is_analytic

__all__ = ["FlopNode", "FlopRow", "flop_rows", "flop_tree", "is_analytic"]
