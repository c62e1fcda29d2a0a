"""Text encoders: any transformers AutoModel with its tokenizer, pooled by [CLS] or a mask-aware mean."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from encoders._hf import (
    config_from_dict,
    hf_call,
    load_config,
    quiet_hf,
    refuse_remote_code,
    resolve_hf_source,
    set_hf_checkpointing,
)
from encoders.base import Encoder, EncoderError, EncoderOutput, masked_mean
from encoders.weights import packaged_default_pooling

POOLINGS = ("mean", "cls")


class TextPreprocessor:
    """Picklable: list of strings (None -> "") -> input_ids / attention_mask, padded to the longest."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        texts = []
        for i, item in enumerate(batch):
            if item is None:
                texts.append("")
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise TypeError(f"text sample {i}: expected str or None, got {type(item).__name__}")
        enc = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class TextEncoder(Encoder):
    """A transformers text backbone (BERT, RoBERTa, MiniLM, ...) plus its tokenizer."""

    modality = "text"

    def __init__(
        self,
        backbone: torch.nn.Module,
        tokenizer: Any,
        spec: str,
        pooling: str = "mean",
        max_length: int = 128,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise EncoderError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.spec = spec
        self.pooling = pooling
        limit = getattr(backbone.config, "max_position_embeddings", None)
        # RoBERTa-style position ids start after the padding index: leave room for that offset.
        if limit is not None and getattr(backbone.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2
        self.max_length = int(min(max_length, limit)) if limit else int(max_length)
        self.trust_remote_code = bool(trust_remote_code)
        self.output_dim = int(backbone.config.hidden_size)
        self.token_dim = self.output_dim  # tokens are the last hidden states
        # The HF pooler head (dense + tanh on [CLS]) is unused: drop it so DDP sees no unused params.
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None

    @classmethod
    def create(
        cls,
        name: str,
        pretrained: bool = True,
        pooling: Optional[str] = None,
        max_length: Optional[int] = None,
        trust_remote_code: bool = False,
        model_config: Optional[dict] = None,
        tokenizer: Optional[str] = None,
    ) -> TextEncoder:
        """Build from a hub id / local dir (see module docs for the resolution order).

        `max_length` defaults to a sentence-transformers dir's `max_seq_length`, else 128.
        """
        from transformers import AutoModel

        spec = f"text:{name}"
        if pooling is None:
            pooling = packaged_default_pooling(name) or "mean"
        if model_config is not None:
            if pretrained:
                raise EncoderError("model_config builds random weights: pass pretrained=False with it")
            config = config_from_dict(model_config)
            tok_path = tokenizer
            if tok_path is None:
                source, path = resolve_hf_source(name)
                if source == "hub":
                    raise EncoderError(
                        f"text:{name} with model_config needs tokenizer=<local tokenizer dir> (none available offline)"
                    )
                tok_path = path
            tok = _load_tokenizer(name, tok_path, trust_remote_code)
            max_length = max_length or 128
            if "vocab_size" not in model_config:
                config.vocab_size = len(tok)
            with quiet_hf():
                backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
            return cls(backbone, tok, spec, pooling, max_length, trust_remote_code)

        source, path = resolve_hf_source(name)
        if max_length is None:
            max_length = _sentence_transformers_max_length(path) if source != "hub" else None
        max_length = max_length or 128
        tok = _load_tokenizer(name, tokenizer or path, trust_remote_code)
        if pretrained:
            backbone = hf_call(
                "text", name, "the model weights",
                lambda: AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code),
            )
        else:
            config = load_config("text", name, source, path, trust_remote_code)
            with quiet_hf():
                backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        return cls(backbone, tok, spec, pooling, max_length, trust_remote_code)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str], trust_remote_code: bool = False) -> TextEncoder:
        """Rebuild with random weights from `get_config()` and the files `save_assets` wrote.

        Only the caller's `trust_remote_code` lets code in `assets_dir` run; the saved config cannot switch it on.
        """
        from transformers import AutoConfig, AutoModel

        if not assets_dir or not os.path.isfile(os.path.join(assets_dir, "config.json")):
            raise EncoderError(f"text encoder assets (config.json, tokenizer) not found in {assets_dir!r}")
        trc = bool(trust_remote_code)
        with refuse_remote_code(assets_dir):
            hf_config = AutoConfig.from_pretrained(assets_dir, trust_remote_code=trc)
            tok = _load_tokenizer(config["name"], assets_dir, trc)
            with quiet_hf():
                backbone = AutoModel.from_config(hf_config, trust_remote_code=trc)
        return cls(backbone, tok, config["spec"], config["pooling"], config["max_length"], trc)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """Encode tokenized text: tokens = last hidden states, pooled by `self.pooling`."""
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        mask = attention_mask.bool()
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, mask)
        return EncoderOutput(pooled=pooled, tokens=hidden, mask=mask)

    def get_preprocessor(self, train: bool = False) -> TextPreprocessor:
        """Tokenizer wrapper (identical for train and eval)."""
        return TextPreprocessor(self.tokenizer, self.max_length)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable/disable HF gradient checkpointing on the backbone."""
        set_hf_checkpointing(self.backbone, self.spec, enable)

    def get_config(self) -> dict[str, Any]:
        """JSON description: spec, pooling, max_length, model type."""
        return {
            "kind": "text",
            "spec": self.spec,
            "name": self.spec.split(":", 1)[1],
            "model_type": getattr(self.backbone.config, "model_type", None),
            "pooling": self.pooling,
            "max_length": self.max_length,
            "trust_remote_code": self.trust_remote_code,
            "output_dim": self.output_dim,
        }

    def save_assets(self, directory: str) -> None:
        """Write the HF config.json and the tokenizer files."""
        os.makedirs(directory, exist_ok=True)
        self.backbone.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def preprocess_config(self) -> dict[str, Any]:
        """What changes the tokenized inputs."""
        return {
            "kind": "text",
            "spec": self.spec,
            "max_length": self.max_length,
            "vocab_size": len(self.tokenizer),
            "tokenizer": type(self.tokenizer).__name__,
        }


def _load_tokenizer(name: str, path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return hf_call(
        "text", name, "the tokenizer", lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    )


def _sentence_transformers_max_length(path: str) -> Optional[int]:
    """`max_seq_length` from a sentence-transformers directory, if it has one."""
    import json

    cfg = os.path.join(path, "sentence_bert_config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg) as f:
        value = json.load(f).get("max_seq_length")
    return int(value) if value else None
