"""Attributions and modality contributions: exact Shapley values, integrated gradients that pass the deletion
check on a trained model, log-mel and attention maps, and the multimodal-explain report."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead
from multimodal.data.loading import Collator
from multimodal.evaluation.explain import _SpectrogramSwap, deletion_check, explain_batch, shapley_values
from multimodal.evaluation.explain_cli import main as explain_main

WORDS = ["red", "blue"]
FILLER = ["the", "a", "small", "thing", "is", "here", "now", "seen", "today"]


class _Presence(torch.nn.Module):
    """Logits depend only on which modalities are present: v(S) known in closed form."""

    def forward(self, features=None, present=None, **_):
        t, i = present["text"].float(), present["image"].float()
        z = 1.0 * t + 2.0 * i + 1.5 * t * i
        return type("Out", (), {"logits": torch.stack([z, torch.zeros_like(z)], dim=1)})()


def test_shapley_is_exact_and_efficient():
    feats = {m: type("F", (), {"pooled": torch.zeros(2, 1)})() for m in ("text", "image")}
    present = {"text": torch.tensor([True, False]), "image": torch.tensor([True, True])}
    phi, p_all, p_none = shapley_values(_Presence(), feats, present, torch.tensor([0, 0]))
    v = {s: torch.sigmoid(torch.tensor(z)).item() for s, z in {"": 0.0, "t": 1.0, "i": 2.0, "ti": 4.5}.items()}
    assert phi["text"][0].item() == pytest.approx(0.5 * (v["t"] - v[""]) + 0.5 * (v["ti"] - v["i"]), abs=1e-6)
    assert phi["image"][0].item() == pytest.approx(0.5 * (v["i"] - v[""]) + 0.5 * (v["ti"] - v["t"]), abs=1e-6)
    torch.testing.assert_close(phi["text"] + phi["image"], p_all - p_none)  # efficiency
    assert phi["text"][1].item() == 0.0  # a modality the example lacks contributes nothing
    assert phi["image"][1].item() == pytest.approx(v["i"] - v[""], abs=1e-6)


def _example(rng, label, no_square=False, no_word=False):
    """The label needs both: the side of a white square (bit 1) and a colour word (bit 0). Without the square
    or the word that bit is unknowable, so a model trained on some such rows (with that bit random) treats the
    baselines (a black image, padding) as no evidence either way."""
    side, word = divmod(label, 2)
    pixels = np.zeros((32, 32, 3), np.uint8)
    if not no_square:
        y, x = int(rng.integers(0, 24)), int(rng.integers(0, 8)) + (16 if side else 0)
        pixels[y:y + 8, x:x + 8] = 255
    words = list(rng.choice(FILLER, size=5))
    if not no_word:
        words.insert(int(rng.integers(0, 6)), WORDS[word])
    return Image.fromarray(pixels), " ".join(words)


@pytest.fixture(scope="module")
def trained(tiny_text_dir):
    """A concat model trained (plain loop) until it solves the two-modality task."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    enc = {"text": create_encoder(f"text:{tiny_text_dir}", pretrained=False),
           "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    model = MultimodalModel(enc, fusion=create_fusion("concat", {m: e.output_dim for m, e in enc.items()}, 32), head=TaskHead(32, 4))
    collate = Collator(model.get_preprocessors(False), "single_label")

    def batch(n, offset=0, ablate=0.0):
        labels = rng.integers(0, 4, size=n)
        items = []
        for k, y in enumerate(labels):
            no_square, no_word = rng.random() < ablate, rng.random() < ablate
            image, text = _example(rng, int(y), no_square, no_word)
            items.append({"image": image, "text": text, "label": int(y), "index": offset + k})
        return collate(items)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**{k: v for k, v in batch(16, ablate=0.2).items() if k != "index"}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test = [batch(1, k) for k in range(8)]
    with torch.no_grad():
        accuracy = np.mean([int(model(inputs=b["inputs"], present=b["present"]).logits.argmax()) == int(b["labels"][0])
                            for b in test])
    assert accuracy >= 0.9, f"the toy model did not learn the task (accuracy {accuracy})"
    return model, test


@pytest.mark.slow
def test_deleting_top_attributed_pixels_and_tokens_hurts_more_than_random(trained):
    model, test = trained
    drops = {"image": [], "text": []}
    for k, b in enumerate(test):
        exp = explain_batch(model, b, steps=16)
        assert exp.target == int(b["labels"][0])
        p, top, rnd = deletion_check(model, b, "image", exp.attributions["image"], exp.target, fraction=0.05, seed=k)
        drops["image"].append((p - top, p - rnd))
        p, top, rnd = deletion_check(model, b, "text", exp.attributions["text"], exp.target, fraction=0.2, seed=k)
        drops["text"].append((p - top, p - rnd))
        tokens = exp.attributions["text"].display
        best = tokens[int(np.argmax(exp.attributions["text"].values))]
        assert best in WORDS  # the colour word carries the text evidence
        assert sum(exp.shapley.values()) == pytest.approx(exp.p_all - exp.p_none, abs=1e-5)
    for m, pairs in drops.items():
        top, rnd = np.array(pairs).T
        assert top.mean() > rnd.mean() + 0.2, (m, top.mean(), rnd.mean())
        assert np.all(top >= rnd - 1e-4), (m, top, rnd)  # a random deletion may hit the key word too: a tie


def test_log_mel_attributions_and_attention_maps(tiny_text_dir):
    torch.manual_seed(0)
    enc = {"text": create_encoder(f"text:{tiny_text_dir}", pretrained=False),
           "audio": create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5,
                                    n_mels=64)}
    fusion = create_fusion("attention", {m: e.output_dim for m, e in enc.items()}, 16, hidden_dim=32, num_layers=1,
                           token_dims={m: e.token_dim for m, e in enc.items()})
    model = MultimodalModel(enc, fusion=fusion, head=TaskHead(16, 3)).eval()
    wave = np.sin(np.linspace(0, 400, 8000)).astype(np.float32)
    batch = Collator(model.get_preprocessors(False), "single_label")(
        [{"text": "a short beep", "audio": (wave, 16000), "label": 1, "index": 0}])
    exp = explain_batch(model, batch, steps=64)
    spec = exp.attributions["audio"]
    assert spec.kind == "spectrogram" and spec.values.shape == spec.display.shape == (64, 51)
    # completeness of integrated gradients through the swapped-in spectrogram: sum = p(x) - p(zeros)
    from multimodal.evaluation.explain import _Forward, encode_all

    feats = encode_all(model, batch)
    fwd = _Forward(model, feats, {m: torch.ones(1, dtype=torch.bool) for m in feats}, "audio", exp.target)
    with torch.no_grad(), _SpectrogramSwap(model.encoders["audio"], torch.zeros(1, 1, 64, 51)):
        p_zero = float(fwd(batch["inputs"]["audio"])[0])
    assert spec.values.sum() == pytest.approx(exp.probabilities[exp.target] - p_zero, abs=0.02)
    assert set(exp.attention_share) == {"audio", "text"} and 0 < sum(exp.attention_share.values()) <= 1 + 1e-6
    assert len(exp.attributions["text"].attention) == len(exp.attributions["text"].display)
    assert len(spec.attention) == feats["audio"].tokens.shape[1]


@pytest.fixture(scope="module")
def explained(trained, tmp_path_factory):
    """The trained model saved with its labels, a 4-row manifest, and rows 2 and 4 explained by the CLI: the
    folder holding model/, m.csv and explain/."""
    tmp_path = tmp_path_factory.mktemp("explained")
    model = trained[0]
    model.save_pretrained(tmp_path / "model")
    with open(tmp_path / "model" / "labels.json", "w") as f:
        json.dump({"task": "single_label", "labels": ["0", "1", "2", "3"]}, f)
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "img")
    rows = []
    for i in range(4):
        image, text = _example(rng, i)
        image.save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": text, "label": str(i)})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "explain"
    assert explain_main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "m.csv"), "--output", str(out),
                         "--rows", "2", "4", "--steps", "8", "--target", "label"]) == 0
    return tmp_path


@pytest.mark.slow
def test_explain_cli_writes_the_report(explained):
    tmp_path, out = explained, explained / "explain"
    report = (out / "report.html").read_text()
    assert report.count("<div class='ex'>") == 2 and "ex001_image.png" in report and "rgba(" in report
    assert os.path.getsize(out / "ex002_image.png") > 0
    record = json.load(open(out / "explanations.json"))["examples"][1]
    assert record["row"].endswith("row 4 (line 5)") and record["target"] == "3"
    assert {t for t, _ in record["attributions"]["text"]["tokens"]} >= {"[CLS]", "[SEP]"}
    assert set(record["deletion_check"]) == {"image", "text"}
    with pytest.raises(SystemExit, match="rows \\[9\\] are not in the manifest"):
        explain_main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "m.csv"), "--output", str(out),
                      "--rows", "9"])


@pytest.mark.slow
def test_explain_report_in_a_browser(explained, browser_check):
    page = browser_check(explained / "explain" / "report.html")
    assert sorted(src for src, _ in page.images) == ["ex001_image.png", "ex002_image.png"]  # text: highlighted tokens
    assert all(loaded for _, loaded in page.images), page.images
    assert page.errors == []
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.size[1] > 600 and np.asarray(shot.convert("L")).std() > 10
