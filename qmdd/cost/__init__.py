"""Counting the savings: parameters, MACs, BOPs, FLOPs, OPs and storage bits.

>>> from qmdd.cost import cost_summary
>>> cost_summary(model, 224)["ops_ratio"]        # FP32 OPs / this model's OPs

Conventions and sources are in :mod:`qmdd.cost._counters` (docs/deployment.md); the counters
for pruned models (non-zero parameters, sparse storage) in :mod:`qmdd.cost._sparse`.
"""

from qmdd.cost._counters import (
    BOPS_PER_OP,
    CostReport,
    LayerCost,
    bops,
    cost_summary,
    count_costs,
    flops,
    format_cost_table,
    fp32_storage_bits,
    layer_costs,
    macs,
    ops,
    parameter_count,
    report_to_dict,
    storage_bits,
    summary_of,
)
from qmdd.cost._sparse import nonzero_parameter_count, sparse_cost_summary, sparse_storage_bits, sparse_weight_bits

__all__ = [
    "BOPS_PER_OP",
    "CostReport",
    "LayerCost",
    "bops",
    "cost_summary",
    "count_costs",
    "flops",
    "format_cost_table",
    "fp32_storage_bits",
    "layer_costs",
    "macs",
    "ops",
    "parameter_count",
    "report_to_dict",
    "storage_bits",
    "summary_of",
    "nonzero_parameter_count",
    "sparse_cost_summary",
    "sparse_storage_bits",
    "sparse_weight_bits",
]
