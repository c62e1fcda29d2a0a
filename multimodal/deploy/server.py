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

Bad input never reaches the model: requests are decoded (`Predictor.decode`, i.e. `multimodal.data.media`)
before they are queued, and answered 4xx with ``{"error": message}``: 400 bad JSON / base64 / media, 413
too large (``max_request_bytes``, checked on the header and on the bytes received) or too many instances,
415 another content type, 422 unknown fields and wrong types. An unexpected failure answers 500 for the
requests of that batch only; the server keeps running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, StrictStr, ValidationError, create_model

from multimodal.deploy.cli import user_errors
from multimodal.deploy.errors import BadInputError
from multimodal.deploy.predictor import Predictor

DEFAULT_MAX_REQUEST_BYTES = 10 * 2**20


class RequestError(Exception):
    """A request answered with a 4xx status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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


def _instance_model(modalities: list[str]) -> Any:
    fields: dict[str, Any] = {m: (Optional[StrictStr], None) for m in modalities}
    return create_model("Instance", __config__=ConfigDict(extra="forbid"), **fields)


def _validation_message(err: Any) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}")
    return "; ".join(parts)


class RequestReader:
    """A request body (JSON or a form) -> the rows of decoded samples it holds, or a `RequestError`."""

    def __init__(self, predictor: Predictor, max_request_bytes: int, max_instances: int) -> None:
        self.predictor, self.max_request_bytes, self.max_instances = predictor, max_request_bytes, max_instances
        self.instance = _instance_model(predictor.modalities)
        self.batch_model = create_model("Instances", __config__=self.instance.model_config,
                                        instances=(list[self.instance], ...))

    async def rows(self, request: Request) -> list[dict]:
        """The decoded rows of a ``POST /predict`` request."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            return await self.json_rows(request)
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return await self.form_rows(request)
        raise RequestError(415, f"content type {kind or 'none'!r}: send application/json or a form")

    async def json_rows(self, request: Request) -> list[dict]:
        """``{"instances": [...]}`` or one instance."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError(422, f"expected a JSON object, got {type(body).__name__}")
        try:
            if "instances" in body:
                items = self.batch_model.model_validate(body).instances
            else:
                items = [self.instance.model_validate(body)]
        except ValidationError as err:
            raise RequestError(422, _validation_message(err)) from None
        if len(items) > self.max_instances:
            raise RequestError(413, f"{len(items)} instances in one request; the limit is {self.max_instances}")
        return [self.decode_fields(item.model_dump(exclude_none=True), i) for i, item in enumerate(items)]

    async def form_rows(self, request: Request) -> list[dict]:
        """One instance from a multipart form: text fields and media files (or base64 fields)."""
        modalities = self.predictor.modalities
        form = await request.form(max_files=len(modalities), max_fields=len(modalities) + 1,
                                  max_part_size=self.max_request_bytes)
        row: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key not in modalities:
                raise RequestError(422, f"{key}: unknown field; this model takes {modalities}")
            if key in row:
                raise RequestError(422, f"{key}: given more than once")
            if isinstance(value, str):
                row[key] = value if key == "text" else {"base64": value}
            elif key == "text":
                raise RequestError(422, "text: send text as a form field, not a file")
            else:
                row[key] = {"bytes": await value.read()}
        return [self.decode_fields(row, 0)]

    def decode_fields(self, fields: dict, index: int) -> dict:
        """One instance's fields (base64 media decoded to bytes) -> the predictor's decoded row."""
        row = {}
        for key, value in fields.items():
            if key != "text" and isinstance(value, str):
                value = {"base64": value}
            if isinstance(value, dict) and "base64" in value:
                try:
                    value = {"bytes": base64.b64decode(value["base64"], validate=True)}
                except (binascii.Error, ValueError):
                    raise RequestError(400, f"instances[{index}].{key}: not valid base64") from None
            row[key] = value
        try:
            return self.predictor.decode(row, index, where=f"instances[{index}]")
        except BadInputError as err:
            raise RequestError(400, str(err)) from None


def create_app(predictor: Predictor, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_instances: int = 64) -> Any:
    """The FastAPI app serving `predictor` (see the module docstring)."""
    predictor.batch_size = int(max_batch_size)
    batcher = Batcher(predictor, max_batch_size, max_wait_ms)
    reader = RequestReader(predictor, max_request_bytes, max_instances)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="multimodal-serve", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    limits = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "max_request_bytes": max_request_bytes,
              "max_instances": max_instances}
    _add_routes(app, predictor, batcher, reader, limits)
    return app


def _add_routes(app: Any, predictor: Predictor, batcher: Batcher, reader: RequestReader, limits: dict) -> None:
    """The error handlers and the endpoints of the module docstring."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

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
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors():
        predictor = Predictor.from_pretrained(args.model, batch_size=args.max_batch_size, num_threads=args.num_threads,
                                              trust_remote_code=args.trust_remote_code)
    app = create_app(predictor, args.max_batch_size, args.max_wait_ms, int(args.max_request_mb * 2**20),
                     args.max_instances)
    print(f"serving {args.model} ({predictor.metadata()['backend']}) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
