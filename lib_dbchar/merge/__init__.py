"""Merging checkpoints the way the webui's Checkpoint Merger does, streamed; LoRA transfer; lineage.

* :func:`run_merge` / :class:`MergeConfig` / :class:`MergeResult` -- weighted sum and add
  difference, tensor-for-tensor as webui 1.10.1, one tensor in memory at a time.
* :func:`run_extract_lora` / :class:`LoraConfig` -- (trained - source) as a LoRA file the webui loads.
* :func:`check_descent` -- does the trained model really come from the chosen source model?

The per-tensor maths is in :mod:`~lib_dbchar.merge.methods`, the key rules in
:mod:`~lib_dbchar.merge.plan`, the streaming writer in :mod:`~lib_dbchar.merge.stream`. Importing
this package imports neither torch nor safetensors.
"""

from lib_dbchar.merge.lineage import DescentReport, LineageConfig, check_descent, lineage_distance
from lib_dbchar.merge.lora import LoraConfig, LoraResult, run_extract_lora
from lib_dbchar.merge.plan import IncompatibleModels
from lib_dbchar.merge.run import MergeConfig, MergeResult, run_merge, webui_output_name

__all__ = [
    "DescentReport",
    "IncompatibleModels",
    "LineageConfig",
    "LoraConfig",
    "LoraResult",
    "MergeConfig",
    "MergeResult",
    "check_descent",
    "lineage_distance",
    "run_extract_lora",
    "run_merge",
    "webui_output_name",
]
