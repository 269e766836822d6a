"""tracr programs as zoo checkpoints: compile a RASP program, convert it to GPT-2, verify, write its ground truth."""

from ._build import TRUTH_FILE, check_round_trip, compile_file, import_program, read_record, write_checkpoint
from ._program import TracrNotInstalledError, TracrProgramError, load_program, require_tracr

__all__ = [
    "TRUTH_FILE",
    "TracrNotInstalledError",
    "TracrProgramError",
    "check_round_trip",
    "compile_file",
    "import_program",
    "load_program",
    "read_record",
    "require_tracr",
    "write_checkpoint",
]
