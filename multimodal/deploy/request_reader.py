"""Reading a ``POST /predict`` request of `multimodal.deploy.server`: the body (JSON or a form) checked for shape
before it is parsed, the instances validated, then decoded off the event loop within a per-request budget.

Every malformed body is a 4xx with a message: 400 for bytes that are not JSON, nesting deeper than
`MAX_JSON_DEPTH`, integers too long to convert, bad base64 or media a sample limit refuses; 413 for too many
instances or a request whose decoded media exceed the budget (`RequestBudget`); 422 for unknown fields (the
message lists the accepted ones) and values of the wrong type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from fastapi import Request
from pydantic import ConfigDict, StrictStr, ValidationError, create_model

from multimodal.deploy.errors import BadInputError
from multimodal.deploy.predictor import Predictor

MAX_JSON_DEPTH = 8  # {"instances": [{"text": ...}]} nests 3 deep
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class RequestError(Exception):
    """A request answered with a 4xx status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped), without parsing it."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    if not skeleton.size:
        return 0
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int32) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max())


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, or a 400 `RequestError` saying what is wrong with it."""
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(400, f"the JSON body nests {depth} levels deep; requests nest at most {MAX_JSON_DEPTH}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer of 5,000 digits (int conversion limit)
        raise RequestError(400, f"the JSON body cannot be read: {err}") from None


@dataclass
class RequestBudget:
    """What the decoded media of one request may add up to, so one request cannot hold the batch thread long."""

    pixels: int = 64_000_000
    audio_seconds: float = 600.0
    text_chars: int = 1_000_000

    def charge(self, used: dict[str, float], row: dict) -> None:
        """Add one decoded row to the request's running totals `used`; a 413 `RequestError` once one is over."""
        image, audio, text = row.get("image"), row.get("audio"), row.get("text")
        if image is not None:
            width, height = image.size  # requests carry encoded files: decoded, they are PIL images
            used["pixels"] = used.get("pixels", 0) + width * height
        if audio is not None:
            used["audio_seconds"] = used.get("audio_seconds", 0) + np.asarray(audio[0]).shape[-1] / audio[1]
        if isinstance(text, str):
            used["text_chars"] = used.get("text_chars", 0) + len(text)
        for key, what in (("pixels", "image pixels"), ("audio_seconds", "seconds of audio"),
                          ("text_chars", "text characters")):
            if used.get(key, 0) > getattr(self, key):
                raise RequestError(413, f"the request decodes to more than {getattr(self, key):,.0f} {what}, what one "
                                        f"request may hold (--max-request-{key.replace('_', '-')})")


def _instance_model(modalities: list[str]) -> Any:
    fields: dict[str, Any] = {m: (Optional[StrictStr], None) for m in modalities}
    return create_model("Instance", __config__=ConfigDict(extra="forbid"), **fields)


def _validation_message(err: ValidationError, modalities: list[str], batched: bool) -> str:
    """pydantic's errors as ``where: what`` parts; an unknown field names the fields accepted there."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc) or "body"
        if e["type"] == "extra_forbidden":
            accepted = ["instances"] if batched and len(loc) == 1 else modalities
            parts.append(f"{where}: unknown field; accepted fields: {', '.join(accepted)}")
        else:
            parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class RequestReader:
    """A request body (JSON or a form) -> the rows of decoded samples it holds, or a `RequestError`."""

    def __init__(self, predictor: Predictor, max_request_bytes: int, max_instances: int,
                 budget: Optional[RequestBudget] = None, decode_threads: int = 2) -> None:
        self.predictor, self.max_request_bytes, self.max_instances = predictor, max_request_bytes, max_instances
        self.budget = budget or RequestBudget()
        self.instance = _instance_model(predictor.modalities)
        self.batch_model = create_model("Instances", __config__=self.instance.model_config,
                                        instances=(list[self.instance], ...))
        self.decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")

    async def rows(self, request: Request) -> list[dict]:
        """The decoded rows of a ``POST /predict`` request (decoded on the reader's threads, not the event loop)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            fields = await self.json_fields(request)
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            fields = await self.form_fields(request)
        else:
            raise RequestError(415, f"content type {kind or 'none'!r}: send application/json or a form")
        return await asyncio.get_running_loop().run_in_executor(self.decoder, self.decode_rows, fields)

    async def json_fields(self, request: Request) -> list[dict]:
        """``{"instances": [...]}`` or one instance -> each instance's fields."""
        body = parse_json(await request.body())
        if not isinstance(body, dict):
            raise RequestError(422, f"expected a JSON object, got {type(body).__name__}")
        batched = "instances" in body
        try:
            items = self.batch_model.model_validate(body).instances if batched else [self.instance.model_validate(body)]
        except ValidationError as err:
            raise RequestError(422, _validation_message(err, self.predictor.modalities, batched)) from None
        if len(items) > self.max_instances:
            raise RequestError(413, f"{len(items)} instances in one request; the limit is {self.max_instances}")
        return [item.model_dump(exclude_none=True) for item in items]

    async def form_fields(self, request: Request) -> list[dict]:
        """One instance from a form: text fields and media files (or base64 fields)."""
        modalities = self.predictor.modalities
        form = await request.form(max_files=len(modalities), max_fields=len(modalities) + 1,
                                  max_part_size=self.max_request_bytes)
        row: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key not in modalities:
                raise RequestError(422, f"{key}: unknown field; accepted fields: {', '.join(modalities)}")
            if key in row:
                raise RequestError(422, f"{key}: given more than once")
            if isinstance(value, str):
                row[key] = value if key == "text" else {"base64": value}
            elif key == "text":
                raise RequestError(422, "text: send text as a form field, not a file")
            else:
                row[key] = {"bytes": await value.read()}
        return [row]

    def decode_rows(self, instances: list[dict]) -> list[dict]:
        """Every instance decoded (`Predictor.decode`, within the media limits) and charged to the budget."""
        rows: list[dict] = []
        used: dict[str, float] = {}
        for i, fields in enumerate(instances):  # stops at the first instance over the budget
            rows.append(self.decode_fields(fields, i))
            self.budget.charge(used, rows[-1])
        return rows

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
