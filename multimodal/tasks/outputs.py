"""Deprecated: the run folder's policy moved to `multimodal.tasks.run_folder`."""

from multimodal.deprecation import moved
from multimodal.tasks import run_folder

__getattr__ = moved(__name__, run_folder)
