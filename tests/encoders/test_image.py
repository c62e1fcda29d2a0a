"""Image encoders: timm CNN/ViT from configs, RGB conversion of every mode, checkpoints, packaged weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import EncoderError, create_encoder, encoder_from_config
from encoders.image import to_rgb


@pytest.fixture(scope="module")
def tiny_cnn():
    return create_encoder("image:test_efficientnet", pretrained=False, img_size=32)


def _all_kinds_of_images() -> list:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P")
    i16 = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    return [
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("L"),
        Image.fromarray(rgb).convert("RGBA"),
        Image.fromarray(rgb).convert("CMYK"),
        pal,
        i16,
        rgb,  # numpy HxWx3
        rgb[..., 0],  # numpy HxW
        rng.random((16, 16, 3)).astype(np.float32),  # float in [0, 1]
        None,
    ]


def test_cnn_forward_backward_shapes(tiny_cnn):
    enc = tiny_cnn.train()
    assert enc.modality == "image" and enc.output_dim == 256
    batch = enc.preprocess(_all_kinds_of_images(), train=True)
    assert batch["pixel_values"].shape == (10, 3, 32, 32)
    out = enc(batch)
    assert out.pooled.shape == (10, 256)
    B, T, D = out.tokens.shape
    assert (B, D) == (10, 256) and T == 1  # 32 px / stride 32 -> 1x1 map, flattened
    assert out.mask.shape == (10, T) and out.mask.all()
    out.pooled.pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


def test_float_pixels_must_be_normalised_unless_said_raw(tiny_cnn):
    enc = tiny_cnn.eval()
    raw = enc.preprocess([np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32, 3), np.uint8)])["pixel_values"]
    with torch.no_grad():
        reference = enc({"pixel_values": raw}).pooled
        normalised = enc.normalize_pixels(raw.float())  # raw 0-255 floats, said to be raw
        torch.testing.assert_close(enc({"pixel_values": normalised}).pooled, reference)
        torch.testing.assert_close(enc.normalize_pixels(raw.float() / 255.0, max_value=1.0), normalised)
        with pytest.raises(ValueError, match=r"float pixel_values span \[0, 200\], outside the normalised range "
                                             r"\[-3\.\d+, 3\.\d+\].*normalize_pixels"):
            enc({"pixel_values": raw.float()})  # would have been encoded as noise, silently
        # what augmentation and attacks do to normalised pixels stays accepted
        jitter = normalised + 0.5 * (2 * torch.rand_like(normalised) - 1)  # e.g. an L-inf attack of radius 0.5
        assert enc({"pixel_values": jitter}).pooled.shape == (2, 256)


def test_vit_tokens_are_the_sequence():
    enc = create_encoder("image:test_vit", pretrained=False, img_size=32)
    x = enc.preprocess([np.zeros((64, 64, 3), np.uint8), None])
    assert x["pixel_values"].shape == (2, 3, 32, 32)
    out = enc(x)
    assert out.pooled.shape == (2, enc.output_dim)
    n_patches = (32 // enc.backbone.patch_embed.patch_size[0]) ** 2
    assert out.tokens.shape == (2, n_patches + enc.backbone.num_prefix_tokens, enc.output_dim)
    out.pooled.sum().backward()
    assert enc.backbone.patch_embed.proj.weight.grad is not None


def test_rgb_conversion_of_modes():
    red_rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(red_rgba).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    assert to_rgb(Image.new("L", (2, 2), 128)).getpixel((0, 0)) == (128, 128, 128)
    cmyk = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 0)
    i16 = to_rgb(Image.fromarray(np.full((2, 2), 65535, np.uint16)))
    assert i16.getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(np.full((3, 5, 6), 10, np.uint8)).size == (6, 5)  # CxHxW
    assert to_rgb(np.full((5, 6), 1.0, np.float32)).getpixel((0, 0)) == (255, 255, 255)
    for image in _all_kinds_of_images()[:-1]:
        assert to_rgb(image).mode == "RGB"


def test_bad_image_names_the_row(tiny_cnn):
    with pytest.raises(ValueError, match="image sample 1"):
        tiny_cnn.preprocess([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 2), np.uint8)])
    with pytest.raises(ValueError, match="image sample 0"):
        tiny_cnn.preprocess(["not an image"])


def test_train_and_eval_transforms_and_pickling(tiny_cnn):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    for train in (False, True):
        pre = pickle.loads(pickle.dumps(tiny_cnn.get_preprocessor(train=train)))
        assert pre([img, None])["pixel_values"].shape == (2, 3, 32, 32)
    ev = tiny_cnn.get_preprocessor(False)
    assert torch.equal(ev([img])["pixel_values"], ev([img])["pixel_values"])


def test_rebuild_from_config_identical_outputs(tiny_cnn, tmp_path):
    enc = tiny_cnn.eval()
    enc.save_assets(str(tmp_path))
    rebuilt = encoder_from_config(enc.get_config(), str(tmp_path)).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    x = enc.preprocess([np.full((40, 40, 3), 7, np.uint8), None])
    assert torch.equal(x["pixel_values"], rebuilt.preprocess([np.full((40, 40, 3), 7, np.uint8), None])["pixel_values"])
    with torch.no_grad():
        assert torch.equal(enc(x).pooled, rebuilt(x).pooled)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_file(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("test_efficientnet", num_classes=10)  # classifier is dropped on load
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    enc = create_encoder(f"image:{path}", model_name="test_efficientnet", img_size=32)
    assert enc.model_name == "test_efficientnet"
    torch.testing.assert_close(enc.backbone.conv_stem.weight, source.conv_stem.weight, rtol=0, atol=0)
    # architecture inferred from the file name
    named = tmp_path / f"test_efficientnet{suffix}"
    path.rename(named)
    enc2 = create_encoder(f"image:{named}", img_size=32)
    assert torch.equal(enc2.backbone.conv_stem.weight, source.conv_stem.weight)
    # strict: a checkpoint of another architecture is refused with a clear message
    with pytest.raises(EncoderError, match="strict"):
        create_encoder(f"image:{named}", model_name="test_resnet")
    with pytest.raises(EncoderError, match="model_name"):
        other = tmp_path / f"mystery{suffix}"
        named.rename(other)
        create_encoder(f"image:{other}")
    with pytest.raises(EncoderError, match="not found"):
        create_encoder(f"image:{tmp_path}/absent.safetensors", model_name="test_efficientnet")


def test_local_timm_style_directory(tmp_path):
    import json

    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_efficientnet", num_classes=0)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg = {"architecture": "test_efficientnet", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    enc = create_encoder(f"image:{tmp_path}", img_size=32)
    assert enc.model_name == "test_efficientnet" and tuple(enc.data_config["std"]) == (0.25, 0.25, 0.25)
    assert torch.equal(enc.backbone.conv_stem.weight, source.conv_stem.weight)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match="model.safetensors"):
        create_encoder(f"image:{tmp_path}")


def test_unknown_pretrained_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError) as info:
        create_encoder("image:resnet50", pretrained=True)
    msg = str(info.value)
    assert "resnet50" in msg and "HF_HUB_OFFLINE" in msg and "pretrained=False" in msg and "checkpoint" in msg
    with pytest.raises(EncoderError, match="unknown timm model"):
        create_encoder("image:not_a_real_net", pretrained=False)


def test_none_is_a_black_image(tiny_cnn):
    pre = tiny_cnn.get_preprocessor(False)
    placeholder = pre([None])["pixel_values"]
    black = pre([Image.new("RGB", (10, 10))])["pixel_values"]
    torch.testing.assert_close(placeholder, black)
    assert placeholder.dtype == torch.uint8 and not placeholder.any()


@pytest.mark.slow
def test_packaged_efficientnet_lite0_classifies_real_photos():
    import skimage.data
    import timm

    from encoders.weights import load_efficientnet_lite0_state_dict

    enc = create_encoder("image:tf_efficientnet_lite0", pretrained=True)
    assert enc.output_dim == 1280
    state = load_efficientnet_lite0_state_dict(num_classes=1000)
    assert len(state) == 296
    clf = timm.create_model("tf_efficientnet_lite0", num_classes=1000, pretrained=False)
    clf.load_state_dict(state, strict=True)
    clf.eval()
    # the encoder holds the same mapped weights
    assert torch.equal(enc.backbone.conv_stem.weight, clf.conv_stem.weight)
    pre = enc.get_preprocessor(train=False)
    with torch.no_grad():
        raw = pre([Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())])["pixel_values"]
        assert raw.dtype == torch.uint8  # workers ship uint8; the encoder normalises on its device
        mean = torch.tensor(enc.data_config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(enc.data_config["std"]).view(1, 3, 1, 1)
        x = (raw.float() / 255.0 - mean) / std
        top5 = clf(x).topk(5, dim=-1).indices.tolist()
        pooled = enc.eval()(pre([Image.fromarray(skimage.data.chelsea())])).pooled
        torch.testing.assert_close(clf.classifier(pooled), clf(x[:1]))
        # already-normalised float pixels are used as given
        torch.testing.assert_close(enc({"pixel_values": x[:1]}).pooled, pooled)
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert set(top5[1]) & {967, 968, 504}, top5[1]  # espresso / cup / coffee mug


@pytest.mark.slow
def test_packaged_weights_map_onto_timm_names_exactly():
    import timm

    from encoders.weights import efficientnet_lite0_packaged_path, map_efficientnet_pytorch_to_timm

    raw = torch.load(efficientnet_lite0_packaged_path(), map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_to_timm(raw)
    model_keys = set(timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict())
    assert set(mapped) == model_keys and len(mapped) == len(raw)
    assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], raw["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    with pytest.raises(EncoderError, match="no mapping"):
        map_efficientnet_pytorch_to_timm({"foo.weight": torch.zeros(1)})


def test_channels_last_backbone_tokens_are_spatial_positions():
    enc = create_encoder("image:swin_tiny_patch4_window7_224", pretrained=False, img_size=64).eval()
    x = enc.preprocess([np.full((64, 64, 3), 90, np.uint8)])
    with torch.no_grad():
        out = enc(x)
        fmap = enc.backbone.forward_features(x["pixel_values"].float() * enc.pixel_scale + enc.pixel_shift)
    assert fmap.shape == (1, 2, 2, 768)  # NHWC
    assert out.tokens.shape == (1, 4, 768) and torch.equal(out.tokens, fmap.reshape(1, 4, 768))


def test_vit_checkpoint_file_loads_at_another_img_size(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "vit_tiny_patch16_224.safetensors"
    save_file(src.state_dict(), str(path))
    enc = create_encoder(f"image:{path}", pretrained=True, img_size=112)
    assert enc.backbone.pos_embed.shape == (1, 50, 192)  # 7x7 patches + class token, resized from 14x14
    assert torch.equal(enc.backbone.patch_embed.proj.weight, src.patch_embed.proj.weight)
