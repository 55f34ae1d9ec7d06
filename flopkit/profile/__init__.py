"""Measured time per layer: ``torch.profiler`` events charged to modules, forward and backward,
against the FLOPs of ``flopkit report`` and roofs measured in the same run.

- :mod:`.attribution`: module ranges, autograd sequence numbers, :func:`attribute`;
- :mod:`.roofline`: measured roofs, minimum bytes, the bound of a row, the roofline plot;
- :mod:`.run`: :func:`profile_model`, the rows and the step summary.

Importing this package imports torch only (matplotlib is imported by the plot).
"""

from .attribution import Attribution, ModuleRanges, OpEvent, attribute, events_from_profiler
from .roofline import Roofs, classify_bound, measure_roofs, plot_roofline, roofline_points
from .run import DTYPES, ProfileResult, ProfileRow, busy_us, deepest_level, profile_model

__all__ = [
    "Attribution",
    "ModuleRanges",
    "OpEvent",
    "attribute",
    "events_from_profiler",
    "Roofs",
    "classify_bound",
    "measure_roofs",
    "plot_roofline",
    "roofline_points",
    "DTYPES",
    "ProfileResult",
    "ProfileRow",
    "busy_us",
    "deepest_level",
    "profile_model",
]
