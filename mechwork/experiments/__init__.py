"""Layer 5: scripted experiments (``mechwork run EXPERIMENT.toml``)."""

from ._config import Experiment, ExperimentError, Step, parse_experiment
from ._runner import RUN_FILE, RunResult, run_experiment
from ._steps import StepFailed

__all__ = ["RUN_FILE", "Experiment", "ExperimentError", "RunResult", "Step", "StepFailed", "parse_experiment",
           "run_experiment"]
