"""Counting the savings: parameters, MACs, BOPs, FLOPs, OPs and storage bits.

>>> from qmdd.cost import cost_summary
>>> cost_summary(model, 224)["ops_ratio"]        # FP32 OPs / this model's OPs

Conventions and sources are in :mod:`qmdd.cost._counters` (reference.md §4).
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
]
