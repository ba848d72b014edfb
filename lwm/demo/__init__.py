"""The main job on its embedded default (`lwm demo`): the synthetic world end to end.

`config` holds the demo's root config, `pipeline` runs world → tokenizer → stores → training →
evaluation, `evaluate` measures the trained model, `report` writes `results.json` and `report.md`.
"""

from lwm.demo.config import DemoConfig
from lwm.demo.pipeline import run_demo

__all__ = ["DemoConfig", "run_demo"]
