"""Layer 5: the method leaderboard on the zoo's planted circuits."""

from ._leaderboard import BenchSettings, circuit_models, markdown_table, run_cell, run_leaderboard

__all__ = ["BenchSettings", "circuit_models", "markdown_table", "run_cell", "run_leaderboard"]
