"""``multimodal-serve``: a FastAPI app on uvicorn around a `Predictor`, with batching of concurrent requests.

    multimodal-serve --model outputs/text_image_classification/model --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"text": "a digit in red ink", "image": "'"$(base64 -w0 digit.png)"'"}'
    curl -s localhost:8000/predict -F text='a digit in red ink' -F image=@digit.png

Endpoints: ``POST /predict`` takes JSON (one instance ``{"text": ..., "image": <base64>, "audio": <base64>}`` or
``{"instances": [...]}``) or a multipart form (text fields, image/audio files) and answers
``{"predictions": [...]}``; ``GET /health``; ``GET /metadata`` (labels, modalities, backend, versions, limits).

Why FastAPI + uvicorn: both are installed with the deploy extra, widely used and maintained, and enough here;
batching is a small asyncio queue (`Batcher`): requests that arrive within ``max_wait_ms`` of each other are
run as one batch of up to ``max_batch_size`` rows on one worker thread. LitServe (built on the same two)
would add its own batching but another dependency.

This module imports fastapi and uvicorn (the deploy extra); ``import multimodal`` does not import it.

Bad input never reaches the model: requests are read and decoded (`multimodal.deploy.request_reader`:
`Predictor.decode`, i.e. `multimodal.data.media` with its per-sample limits, on decoding threads apart from the
event loop and the batch thread) before they are queued, and answered 4xx with ``{"error": message}``: 400 bad
JSON (nesting too deep, integers too long) / base64 / media, or media a sample limit refuses (an EPS file, a
1 x 5000 image, a 10-hour WAV); 413 too large (``max_request_bytes``, checked on the header and on the bytes
received), too many instances, or decoded media over the per-request budget (pixels, audio seconds, text
characters); 415 another content type; 422 unknown fields (the message lists the accepted ones) and wrong
types. An unexpected failure answers 500 for the requests of that batch only; the server keeps running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from multimodal.data.limits import add_limit_options, limits_from_args
from multimodal.deploy.cli import user_errors
from multimodal.deploy.errors import BadInputError
from multimodal.deploy.predictor import Predictor
from multimodal.deploy.request_reader import RequestBudget, RequestError, RequestReader

DEFAULT_MAX_REQUEST_BYTES = 10 * 2**20


class Batcher:
    """Rows from concurrent requests -> batches for the predictor, on one worker thread."""

    def __init__(self, predictor: Predictor, max_batch_size: int = 32, max_wait_ms: float = 5.0) -> None:
        self.predictor, self.max_batch_size, self.max_wait = predictor, int(max_batch_size), max_wait_ms / 1000.0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        self.stats = {"batches": 0, "rows": 0, "requests": 0, "largest_batch": 0}

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop and the worker thread."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, samples: list[dict]) -> list[dict]:
        """Predictions for one request's decoded rows (run together with other waiting requests)."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((samples, future))
        return await future

    async def _collect(self) -> list[tuple[list[dict], asyncio.Future]]:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        rows, deadline = len(items[0][0]), loop.time() + self.max_wait
        while rows < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                break
            items.append(item)
            rows += len(item[0])
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            while items:
                flat = [s for samples, _ in items for s in samples]
                try:
                    preds = await loop.run_in_executor(self.executor, self.predictor.predict_decoded, flat)
                except BadInputError as err:  # one row failed preprocessing: fail its request, rerun the rest
                    owner = _owner(items, err.row)
                    if owner is None:
                        _fail(items, err)
                        break
                    samples, future = items.pop(owner)
                    local = err.row - sum(len(s) for s, _ in items[:owner])
                    _fail([(samples, future)], RequestError(400, f"instances[{local}]: field {err.field!r}: "
                                                                 f"{err.__cause__ or err}"))
                    continue
                except Exception as err:  # noqa: BLE001 - answer 500 for this batch, keep serving
                    _fail(items, err)
                    break
                self.stats["batches"] += 1
                self.stats["rows"] += len(flat)
                self.stats["requests"] += len(items)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(flat))
                start = 0
                for samples, future in items:
                    if not future.done():
                        future.set_result(preds[start : start + len(samples)])
                    start += len(samples)
                break


def _owner(items: list, row: Optional[int]) -> Optional[int]:
    if row is None:
        return None
    start = 0
    for k, (samples, _) in enumerate(items):
        if start <= row < start + len(samples):
            return k
        start += len(samples)
    return None


def _fail(items: list, err: Exception) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(err)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, by its Content-Length or by the bytes read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_error(send, 413, f"request body over the limit of {self.limit} bytes")
            return
        received, started = 0, False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestError(413, f"request body over the limit of {self.limit} bytes")
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except RequestError as err:
            if not started:
                await _send_error(send, err.status, err.message)


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(predictor: Predictor, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_instances: int = 64,
               budget: Optional[RequestBudget] = None) -> Any:
    """The FastAPI app serving `predictor` (see the module docstring); `budget` bounds one request's decoded media
    (the per-sample limits are the predictor's, `Predictor.limits`)."""
    predictor.batch_size = int(max_batch_size)
    batcher = Batcher(predictor, max_batch_size, max_wait_ms)
    budget = budget or RequestBudget()
    reader = RequestReader(predictor, max_request_bytes, max_instances, budget)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()
        reader.decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="multimodal-serve", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    limits = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "max_request_bytes": max_request_bytes,
              "max_instances": max_instances, "max_request_pixels": budget.pixels,
              "max_request_audio_seconds": budget.audio_seconds, "max_request_text_chars": budget.text_chars}
    _add_routes(app, predictor, batcher, reader, limits)
    return app


def _add_routes(app: Any, predictor: Predictor, batcher: Batcher, reader: RequestReader, limits: dict) -> None:
    """The error handlers and the endpoints of the module docstring."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # e.g. a malformed multipart body
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {**predictor.metadata(), "server": {**limits, "stats": dict(batcher.stats)}}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        return {"predictions": await batcher.submit(await reader.rows(request))}


def main(argv: Optional[list[str]] = None) -> int:
    """multimodal-serve: serve a model folder (PyTorch or exported) over HTTP."""
    parser = argparse.ArgumentParser(prog="multimodal-serve", description=main.__doc__)
    parser.add_argument("--model", required=True, help="a PyTorch model folder or an exported one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows per model call")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / 2**20)
    parser.add_argument("--max-instances", type=int, default=64, help="instances per request")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code from the model folder to run")
    parser.add_argument("--log-level", default="warning")
    add_limit_options(parser)
    budget = RequestBudget()
    parser.add_argument("--max-request-pixels", type=int, default=budget.pixels, help="decoded image pixels per request")
    parser.add_argument("--max-request-audio-seconds", type=float, default=budget.audio_seconds,
                        help="decoded audio per request")
    parser.add_argument("--max-request-text-chars", type=int, default=budget.text_chars, help="text per request")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors():
        predictor = Predictor.from_pretrained(args.model, batch_size=args.max_batch_size, num_threads=args.num_threads,
                                              trust_remote_code=args.trust_remote_code,
                                              limits=limits_from_args(args, parser))
    budget = RequestBudget(args.max_request_pixels, args.max_request_audio_seconds, args.max_request_text_chars)
    app = create_app(predictor, args.max_batch_size, args.max_wait_ms, int(args.max_request_mb * 2**20),
                     args.max_instances, budget)
    print(f"serving {args.model} ({predictor.metadata()['backend']}) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
