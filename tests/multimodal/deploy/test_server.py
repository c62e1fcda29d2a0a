"""multimodal-serve over real HTTP on 127.0.0.1: predictions equal the Predictor's, JSON and multipart, batching of
concurrent requests, 4xx with a message for every kind of bad request, and a server that keeps answering."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from deploy_helpers import free_port
from PIL import Image

from multimodal.deploy import Predictor
from multimodal.deploy.server import create_app

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture
def serve():
    """Start `create_app(predictor, **kw)` under uvicorn in a thread; always shut it down."""
    import uvicorn

    servers = []

    def start(predictor: Predictor, **kwargs) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(predictor, **kwargs), host="127.0.0.1", port=port,
                                               log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 60
        while not server.started:
            if time.time() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


def png_bytes(colour: int = 120) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(8000) / 5).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_predict_health_metadata_and_bad_requests(serve, fused_dir):
    predictor = Predictor.from_pretrained(fused_dir)
    url = serve(predictor, max_request_bytes=200_000, max_instances=4)
    client = httpx.Client(base_url=url, timeout=60)
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["labels"] == predictor.labels and meta["modalities"] == ["audio", "image", "text"]
    assert meta["versions"]["onnxruntime"] and meta["backend"] == "pytorch"

    instance = {"text": "a red square", "image": b64(png_bytes()), "audio": b64(wav_bytes())}
    expected = predictor.predict({"text": "a red square", "image": {"bytes": png_bytes()}, "audio": {"bytes": wav_bytes()}})
    single = client.post("/predict", json=instance)
    assert single.status_code == 200
    (got,) = single.json()["predictions"]
    assert got["label"] == expected["label"]
    assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    many = client.post("/predict", json={"instances": [instance, {"text": "only text"}, {"image": b64(png_bytes(9))}]})
    assert many.status_code == 200 and len(many.json()["predictions"]) == 3
    form = client.post("/predict", data={"text": "a red square"}, files={"image": ("a.png", png_bytes(), "image/png"),
                                                                         "audio": ("a.wav", wav_bytes(), "audio/wav")})
    assert form.status_code == 200
    assert form.json()["predictions"][0]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)

    bad = [
        (dict(json={"text": "x", "image": b64(b"definitely not an image")}), 400, "instances[0]: field 'image'"),
        (dict(json={"image": "***not base64***"}), 400, "instances[0].image: not valid base64"),
        (dict(json={"audio": b64(b"RIFF garbage")}), 400, "field 'audio'"),
        (dict(json={"txt": "typo"}), 422, "txt: unknown field"),
        (dict(json={"text": 123}), 422, "text: Input should be a valid string"),
        (dict(json={"instances": [{"text": "a"}, {"image": 5}]}), 422, "instances.1.image"),
        (dict(json={"instances": [{"text": "a"}] * 5}), 413, "limit is 4"),
        (dict(json=[1, 2]), 422, "expected a JSON object"),
        (dict(json={}), 400, "no input given"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"text=hi", headers={"content-type": "text/plain"}), 415, "application/json or a form"),
        (dict(json={"text": "x" * 300_000}), 413, "over the limit of 200000 bytes"),
        (dict(content=iter([b'{"text": "', b"y" * 150_000, b"y" * 150_000, b'"}']),
              headers={"content-type": "application/json"}), 413, "over the limit"),  # chunked: no Content-Length
        (dict(data={"text": "x"}, files={"image": ("a.png", b"\x89PNG broken", "image/png")}), 400, "field 'image'"),
        (dict(data={"label": "x"}), 422, "label: unknown field"),
        (dict(files={"text": ("t.txt", b"hello", "text/plain")}), 422, "text as a form field"),
    ]
    for kwargs, status, message in bad:
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.status_code, response.text)
        assert message in response.json()["error"], response.text
    assert client.get("/health").json() == {"status": "ok"}  # still serving
    assert client.post("/predict", json=instance).json()["predictions"][0]["label"] == expected["label"]


def test_concurrent_requests_are_batched(serve, fused_onnx):
    predictor = Predictor.from_pretrained(fused_onnx)
    url = serve(predictor, max_batch_size=16, max_wait_ms=300)
    texts = [f"caption number {i}" for i in range(12)]
    expected = predictor.predict([{"text": t} for t in texts])

    def ask(text: str) -> dict:
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/predict", json={"text": text}).json()["predictions"][0]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, texts))
    for got, want in zip(answers, expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    stats = httpx.get(f"{url}/metadata").json()["server"]["stats"]
    assert stats["requests"] == 12 and stats["rows"] == 12
    assert stats["batches"] < 12 and stats["largest_batch"] > 1  # several requests shared a model call
    assert stats["largest_batch"] <= 16


def test_a_failing_model_call_answers_500_and_the_server_survives(serve, fused_dir, monkeypatch):
    predictor = Predictor.from_pretrained(fused_dir)
    url = serve(predictor)
    original = predictor.backend.logits
    monkeypatch.setattr(predictor.backend, "logits", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    response = httpx.post(f"{url}/predict", json={"text": "x"}, timeout=60)
    assert response.status_code == 500 and "boom" in response.json()["error"]
    monkeypatch.setattr(predictor.backend, "logits", original)
    assert httpx.post(f"{url}/predict", json={"text": "x"}, timeout=60).status_code == 200


def test_serve_cli_refuses_a_missing_model_without_a_traceback(tmp_path):
    """The server CLI's user error is its message alone (a served folder answering curl is
    tests/multimodal/deploy/test_main_job.py, which starts `python -m multimodal.deploy.server` and asks curl)."""
    from multimodal.deploy.server import main as serve_main

    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--model", str(tmp_path / "nope")])
    assert "does not exist" in str(exit_info.value.code)


def test_hostile_bodies_and_media_answer_4xx_with_a_message(serve, fused_dir, hostile_corpus):
    from multimodal.deploy.request_reader import RequestBudget

    folder, _ = hostile_corpus
    predictor = Predictor.from_pretrained(fused_dir)
    url = serve(predictor, budget=RequestBudget(pixels=1000, audio_seconds=3.0, text_chars=50_000))
    client = httpx.Client(base_url=url, timeout=60)

    def file(name: str) -> bytes:
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()

    json_body = {"content-type": "application/json"}
    bad = [
        (dict(content=b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", headers=json_body), 400, "nests 50001 levels"),
        (dict(content=b'{"text": ' + b"7" * 5000 + b"}", headers=json_body), 400, "Exceeds the limit"),
        (dict(json={"txt": "typo"}), 422, "txt: unknown field; accepted fields: audio, image, text"),
        (dict(json={"instances": [{"text": "a"}], "extra": 1}), 422, "extra: unknown field; accepted fields: instances"),
        (dict(content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}), 400, ""),
        (dict(files={"image": ("x.eps", file("x.eps"), "image/png")}), 400, "looks like EPS"),
        (dict(files={"image": ("w.png", file("png_1x5000.png"), "image/png")}), 400, "max_image_aspect"),
        (dict(files={"image": ("h.png", file("png_12000x12000.png"), "image/png")}), 400, "max_image_pixels"),
        (dict(files={"audio": ("t.wav", file("wav_truncated.wav"), "audio/wav")}), 400, "truncated"),
        (dict(files={"audio": ("l.flac", file("silence_700s.flac"), "audio/flac")}), 400, "max_audio_seconds"),
        (dict(json={"instances": [{"image": b64(png_bytes())}] * 3}), 413, "--max-request-pixels"),
        (dict(json={"instances": [{"audio": b64(wav_bytes())}] * 8}), 413, "--max-request-audio-seconds"),
        (dict(json={"instances": [{"text": "x" * 40_000}] * 2}), 413, "--max-request-text-chars"),
    ]
    for kwargs, status, message in bad:
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.status_code, response.text[:300])
        assert message in response.json()["error"], response.text[:300]
    accepted = client.post("/predict", files={"audio": ("r.wav", file("rate_16001.wav"), "audio/wav")})
    assert accepted.status_code == 200, accepted.text  # a 16001 Hz WAV: resampled with a bounded filter
    meta = client.get("/metadata").json()
    assert meta["limits"]["max_image_pixels"] == 16_000_000 and meta["server"]["max_request_pixels"] == 1000
