"""Image encoders: any timm backbone, with timm's data-config transforms and robust RGB conversion."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from encoders._timm import (
    DATA_CONFIG_KEYS,
    DEFAULT_POOL_STAGES,
    channels_last,
    create_timm_backbone,
    fixed_input_size,
    pooled_width,
    pooled_with_stages,
    resolve_pool_stages,
    resolve_timm_source,
    set_timm_checkpointing,
    tokens_from_features,
)
from encoders.base import Encoder, EncoderOutput, jsonable
from encoders.samples import MAX_IMAGE_ASPECT, rgb_images, to_rgb

__all__ = ["ImageEncoder", "ImagePreprocessor", "bounded_resize", "to_rgb"]


# How far (in normalised units, i.e. standard deviations) float pixels may stray outside the range that
# normalising [0, 1] values gives, before `check_normalized` calls them raw: room for augmentation and
# adversarial perturbations, far below what raw 0-255 floats reach.
PIXEL_MARGIN = 1.0


def _tracing() -> bool:
    """True while torch.jit / torch.onnx / torch.compile trace the model (no data-dependent checks then)."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


class ImagePreprocessor:
    """Picklable: list of images (PIL / numpy / None -> a black image) -> {"pixel_values": uint8 [B, 3, H, W]}."""

    def __init__(self, transform: Any, input_size: tuple[int, int, int]) -> None:
        self.transform = transform
        self.input_size = tuple(input_size)

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        tensors = [self.transform(image) for image in rgb_images(batch, self.input_size)]
        if not tensors:
            return {"pixel_values": torch.zeros((0, *self.input_size), dtype=torch.uint8)}
        return {"pixel_values": torch.stack(tensors)}

    def resize_side(self) -> Optional[int]:
        """The shorter side a plain ``Resize`` first scales the image to (the larger of a fixed height and width);
        None when the transform starts otherwise (a random crop: training augmentation)."""
        from torchvision import transforms as T

        for step in getattr(self.transform, "transforms", [self.transform]):
            if isinstance(step, T.Resize):
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                return int(max(size))
            if not isinstance(step, (T.CenterCrop, T.ToTensor, T.PILToTensor)) and type(step).__name__ != "MaybeToTensor":
                return None
        return None


def bounded_resize(transform: Any, max_aspect: float = MAX_IMAGE_ASPECT) -> Any:
    """`transform` with every shorter-side `Resize` capped at `max_aspect` times its size on the longer side
    (torchvision's ``max_size``), so a very elongated image never becomes a huge one (a 1x5000 image resized
    to 256 on its shorter side would be 256 x 1,280,000)."""
    from torchvision import transforms as T

    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, T.Resize) and step.max_size is None:
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            if len(size) == 1:
                step.max_size = int(size[0] * max_aspect)
    return transform


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
        pool_stages: Union[str, Sequence[int], None] = None,
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
        self.pool_stages = resolve_pool_stages(pool_stages, backbone, spec)
        self.output_dim = pooled_width(backbone, self.pool_stages)
        self.token_dim = int(backbone.num_features)
        # uint8 pixels are normalised here, on the model's device (non-persistent: not in the state dict).
        mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)
        # What normalising [0, 1] pixels gives, widened by PIXEL_MARGIN: float inputs outside it are refused.
        self.normalized_range = (float((-mean / std).min()) - PIXEL_MARGIN, float(((1 - mean) / std).max()) + PIXEL_MARGIN)

    @classmethod
    def create(
        cls,
        name: str,
        pretrained: bool = True,
        img_size: Optional[int] = None,
        model_name: Optional[str] = None,
        pool_stages: Union[str, Sequence[int], None] = DEFAULT_POOL_STAGES,
        **kwargs: Any,
    ) -> ImageEncoder:
        """Build `image:<timm name, hf-hub:repo, checkpoint file or timm-style dir>`; extra kwargs go to timm.

        `pool_stages`: indices of timm `feature_info` stages whose global-average-pooled outputs are appended
        to `pooled` (e.g. [-2]); empty: `pooled` is the backbone's own pooled feature.
        """
        source = resolve_timm_source("image", name, model_name)
        data_overrides = {**source.data, **{k: kwargs.pop(k) for k in DATA_CONFIG_KEYS if k in kwargs}}
        timm_kwargs = {**source.model_args, **kwargs}
        build_kwargs = dict(timm_kwargs)
        if img_size is not None and fixed_input_size(source.arch):
            build_kwargs["img_size"] = int(img_size)
        backbone = create_timm_backbone(
            source.arch, pretrained, "image", name, checkpoint=source.checkpoint, hub_id=source.hub_id, **build_kwargs
        )
        return cls(backbone, f"image:{name}", source.arch, img_size, timm_kwargs, data_overrides, pool_stages)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str] = None) -> ImageEncoder:
        """Rebuild the architecture (random weights) from `get_config()`; needs no files."""
        import timm

        kwargs = dict(config.get("timm_kwargs") or {})
        img_size = config.get("img_size")
        if img_size is not None and fixed_input_size(config["model_name"]):
            kwargs["img_size"] = int(img_size)
        backbone = timm.create_model(config["model_name"], num_classes=0, pretrained=False, **kwargs)
        return cls(
            backbone, config["spec"], config["model_name"], img_size, config.get("timm_kwargs"),
            config.get("data_overrides"), config.get("pool_stages"),  # older folders: none
        )

    def normalize_pixels(self, pixels: torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
        """Raw pixels in [0, `max_value`] (uint8, or floats: 255.0 or 1.0 scale) -> the normalised floats
        `forward` takes, with the timm data config's mean/std."""
        if max_value <= 0:
            raise ValueError(f"normalize_pixels: max_value must be > 0, got {max_value}")
        scale = self.pixel_scale.to(pixels.device) * (255.0 / float(max_value))
        return pixels.to(scale.dtype) * scale + self.pixel_shift.to(pixels.device)

    def check_normalized(self, pixels: torch.Tensor) -> None:
        """Refuse float pixels far outside what mean/std normalisation of [0, 1] values gives (raw 0-255 floats,
        say): they would be encoded as noise without an error. The margin leaves room for augmentation."""
        low, high = self.normalized_range
        if pixels.device.type != "cpu":  # checked on the device: no host sync per step
            torch._assert_async(((pixels >= low) & (pixels <= high)).all(), f"image encoder: float pixel_values "
                                f"outside the normalised range [{low:.2f}, {high:.2f}]; raw pixels go through "
                                "encoder.normalize_pixels(x, max_value) first")
            return
        lo, hi = (float(v) for v in pixels.aminmax()) if pixels.numel() else (0.0, 0.0)
        if lo < low or hi > high:
            raise ValueError(f"image encoder ({self.spec}): float pixel_values span [{lo:.3g}, {hi:.3g}], outside the "
                             f"normalised range [{low:.2f}, {high:.2f}] of this encoder's mean/std; pass uint8 pixels "
                             "(encoder.preprocess), normalised floats, or say they are raw with "
                             "encoder.normalize_pixels(x, max_value=255.0 or 1.0)")

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """pixel_values -> tokens from forward_features, pooled from forward_head(pre_logits=True) (with the
        pooled `pool_stages` appended).

        uint8 `pixel_values` (what `preprocess` returns) are normalised with the timm data config's
        mean/std here; floating-point `pixel_values` must be normalised already (`normalize_pixels` turns
        raw ones into that), and far out-of-range floats raise (`check_normalized`).
        """
        pixels = inputs["pixel_values"]
        if pixels.dtype == torch.uint8:
            pixels = pixels.to(self.pixel_scale.dtype) * self.pixel_scale + self.pixel_shift
        elif pixels.is_floating_point() and not _tracing():
            self.check_normalized(pixels)
        features, pooled = pooled_with_stages(self.backbone, pixels, self.pool_stages)
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
        return ImagePreprocessor(bounded_resize(transform), self.data_config["input_size"])

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
            "pool_stages": self.pool_stages,
            "output_dim": self.output_dim,
        }

    def save_assets(self, directory: str) -> None:
        """Write the resolved timm data config (for reference; rebuilding needs only get_config())."""
        import json

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "data_config.json")
        with open(path + ".tmp", "w") as f:  # then renamed: a reader never sees half a file
            json.dump(jsonable(self.data_config), f, indent=2)
        os.replace(path + ".tmp", path)

    def preprocess_config(self) -> dict[str, Any]:
        """What changes the pixel values."""
        return {"kind": "image", "model_name": self.model_name, "data_config": jsonable(self.data_config),
                "pixel_format": "uint8"}
