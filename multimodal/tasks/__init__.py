"""Tasks: the protocol (`Task`), the built-in classification and retrieval tasks, and the one runner."""

from multimodal.evaluation.report import EvalResult
from multimodal.tasks.base import Task, apply_freezing, create_encoders, modality_columns
from multimodal.tasks.classification import ClassificationTask, MultiLabelTask, RegressionTask
from multimodal.tasks.multitask import MultiTask
from multimodal.tasks.prompt import PromptClassifierTask
from multimodal.tasks.retrieval import RetrievalTask
from multimodal.tasks.runner import build_loaders, recipe_main, run, summarize, train_and_evaluate

__all__ = [
    "ClassificationTask",
    "EvalResult",
    "MultiLabelTask",
    "MultiTask",
    "PromptClassifierTask",
    "RegressionTask",
    "RetrievalTask",
    "Task",
    "apply_freezing",
    "build_loaders",
    "create_encoders",
    "modality_columns",
    "recipe_main",
    "run",
    "summarize",
    "train_and_evaluate",
]
