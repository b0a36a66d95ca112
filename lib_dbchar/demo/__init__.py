"""The end-to-end demo (``python -m lib_dbchar demo``) and the tiny models it trains.

Importing this package does no work; :func:`run_demo` imports torch and friends when it runs.
"""

from lib_dbchar.demo.run import DemoResult, DemoStep, default_out_dir, run_demo

__all__ = ["DemoResult", "DemoStep", "default_out_dir", "run_demo"]
