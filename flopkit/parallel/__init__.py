"""Sharded training counted per GPU: FLOPs, communication and memory of one rank under FSDP2, HSDP
and tensor parallelism, from torch's own APIs run on a fake process group (see :mod:`.run`).

``torch.distributed`` is imported when a count runs, not with this package.
"""

from .plan import TP_STYLES, ParallelConfig, TensorParallelPlan, fsdp_units, resolve_tp_plan
from .report import (
    H100_BF16_TFLOPS,
    NVLINK4_GBPS,
    ShardedMemory,
    ShardedReport,
    ShardedRow,
    StepTime,
    sharded,
    sharded_memory,
    sharded_report,
    step_time,
)
from .run import CollectiveCall, ShardedCount, count_sharded, wire_bytes

__all__ = [
    "TP_STYLES",
    "ParallelConfig",
    "TensorParallelPlan",
    "fsdp_units",
    "resolve_tp_plan",
    "H100_BF16_TFLOPS",
    "NVLINK4_GBPS",
    "ShardedMemory",
    "ShardedReport",
    "ShardedRow",
    "StepTime",
    "sharded",
    "sharded_memory",
    "sharded_report",
    "step_time",
    "CollectiveCall",
    "ShardedCount",
    "count_sharded",
    "wire_bytes",
]
