"""The research-code example from the README, run as written (real MiniLM + EfficientNet-Lite0, offline)."""

from __future__ import annotations


def test_readme_example_one_training_step():
    # --- README example start ---
    import torch
    from skimage import data

    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead

    text = create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", max_length=32)
    image = create_encoder("image:tf_efficientnet_lite0")
    fusion = create_fusion("gated", {"text": text.output_dim, "image": image.output_dim}, output_dim=256)
    model = MultimodalModel({"text": text, "image": image}, fusion, TaskHead(256, num_outputs=2))

    captions = ["a cat looking at the camera", "a cup of coffee", None]  # None: this sample has no text
    images = [data.chelsea(), data.coffee(), data.astronaut()]
    batch = {
        "inputs": {
            "text": text.preprocess(captions, train=True),
            "image": image.preprocess(images, train=True),
        },
        "present": {
            "text": torch.tensor([c is not None for c in captions]),
            "image": torch.ones(3, dtype=torch.bool),
        },
        "labels": torch.tensor([0, 1, 0]),
    }
    optimizer = torch.optim.AdamW(model.parameter_groups(encoder_lr=1e-5, head_lr=1e-3, weight_decay=0.01))

    model.train()
    out = model(**batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"loss {out.loss.item():.3f}, logits {tuple(out.logits.shape)}")
    # --- README example end ---

    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    assert (text.output_dim, image.output_dim) == (384, 1280)
    # The step used non-zero gradients of both encoders and of the fusion and head.
    names = {id(p): n for n, p in model.named_parameters()}
    moved = {
        n for p, state in optimizer.state.items() if state["exp_avg"].abs().sum() > 0 for n in [names[id(p)]]
    }
    for prefix in ("encoders.text.", "encoders.image.", "fusion.", "head."):
        assert any(n.startswith(prefix) for n in moved), prefix
