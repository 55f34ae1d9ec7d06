"""Predicted GPU memory of a training or inference step, per layer and at its peak, without a GPU.

:func:`memory` replays one step on the meta device with the CUDA semantics that decide its memory
(:mod:`flopkit.step_memory.cuda`), tracking every allocation (:mod:`flopkit.step_memory.trace`);
:func:`fit_batch` finds the largest batch that fits a budget. See ``docs/memory.md``.
"""

from .predict import FitResult, LayerMemory, MemoryResult, fit_batch, format_bytes, memory, parse_bytes

__all__ = ["memory", "fit_batch", "MemoryResult", "LayerMemory", "FitResult", "parse_bytes", "format_bytes"]
