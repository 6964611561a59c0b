"""Evaluation beyond the loss: multiple-choice tasks (HellaSwag's format or a plain one) scored
by log-likelihood, and an lm-evaluation-harness model for our checkpoints
(``llm_scratch.eval.lm_eval_model``, which needs the ``eval`` extra)."""

from llm_scratch.eval.scorer import Score, TaskResult, encode_pair, evaluate_task, score_tokens
from llm_scratch.eval.tasks import Example, Task, read_task, read_tasks

__all__ = [
    "Example",
    "Score",
    "Task",
    "TaskResult",
    "encode_pair",
    "evaluate_task",
    "read_task",
    "read_tasks",
    "score_tokens",
]
