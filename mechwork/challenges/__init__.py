"""Layer 5: hidden-mechanism challenges — pose them, export them blind, score submissions, and test
hypotheses before submitting."""

from ._create import create_circuit_challenge, create_program_challenge
from ._export import export_challenge
from ._hypothesis import HypothesisResult, resample_circuit, resample_variable
from ._registry import builtin_names, get_challenge, load_pack
from ._scoring import score_circuit, score_program, score_submission, score_trigger
from ._submissions import run_program
from ._types import ASKS, Challenge, ChallengeError, Score, SubmissionError, predict_labels

__all__ = [
    "ASKS",
    "Challenge",
    "ChallengeError",
    "HypothesisResult",
    "Score",
    "SubmissionError",
    "builtin_names",
    "create_circuit_challenge",
    "create_program_challenge",
    "export_challenge",
    "get_challenge",
    "load_pack",
    "predict_labels",
    "resample_circuit",
    "resample_variable",
    "run_program",
    "score_circuit",
    "score_program",
    "score_submission",
    "score_trigger",
]
