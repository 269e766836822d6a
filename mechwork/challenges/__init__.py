"""Layer 5: hidden-mechanism challenges — pose them, export them blind, score submissions, and test
hypotheses before submitting. Kinds of question (program, circuit, trigger, sequence-program, or your
own) are registered by name; a pack records each question's kind and input space as JSON."""

from ._create import create_challenge, create_circuit_challenge, create_program_challenge, create_tracr_challenge
from ._export import export_challenge
from ._hypothesis import HypothesisResult, resample_circuit, resample_variable
from ._kinds import ASKS, TokenIds, TokenSpace, UnknownKindError, get_kind, kinds, register_kind
from ._registry import blind_name, builtin_listing, builtin_names, get_challenge, load_pack
from ._scoring import score_circuit, score_program, score_submission, score_trigger
from ._sequence import SequenceSpace, SequenceTruth, run_sequence_program, score_sequence_program
from ._submissions import run_program
from ._types import Challenge, ChallengeError, ChallengeKind, Question, Score, SubmissionError, predict_labels

__all__ = [
    "ASKS",
    "Challenge",
    "ChallengeError",
    "ChallengeKind",
    "HypothesisResult",
    "Question",
    "Score",
    "SequenceSpace",
    "SequenceTruth",
    "SubmissionError",
    "TokenIds",
    "TokenSpace",
    "UnknownKindError",
    "blind_name",
    "builtin_listing",
    "builtin_names",
    "create_challenge",
    "create_circuit_challenge",
    "create_program_challenge",
    "create_tracr_challenge",
    "export_challenge",
    "get_challenge",
    "get_kind",
    "kinds",
    "load_pack",
    "predict_labels",
    "register_kind",
    "resample_circuit",
    "resample_variable",
    "run_program",
    "run_sequence_program",
    "score_circuit",
    "score_program",
    "score_sequence_program",
    "score_submission",
    "score_trigger",
]
