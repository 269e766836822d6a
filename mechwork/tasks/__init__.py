"""Standard tasks for pretrained models (IOI, greater-than, docstring, subject-verb agreement): clean/corrupted
prompt pairs of equal token length with single-token answers, for any tokenizer."""

from ._greater_than import year_tokens
from ._registry import StandardTask, UnknownTaskError, generate, get_task, register_task, tasks
from ._types import PromptSet, TaskError, TaskReport, WordListCount, check_prompt_set

__all__ = [
    "PromptSet",
    "StandardTask",
    "TaskError",
    "TaskReport",
    "UnknownTaskError",
    "WordListCount",
    "check_prompt_set",
    "generate",
    "get_task",
    "register_task",
    "tasks",
    "year_tokens",
]
