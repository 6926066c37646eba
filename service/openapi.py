"""OpenAPI documentation of ``POST /segment`` that FastAPI cannot infer: the request body media
types, the response media types and headers, and the problem+json errors. Nothing here runs on
the request path."""

from __future__ import annotations

from typing import Any

from service.problems import PROBLEM_MEDIA_TYPE
from service.protocol import MULTIPART, RAW_MEDIA_TYPES
from service.schemas import Problem, RleResult


def problem_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": Problem.model_json_schema()}},
    }


_BINARY = {"schema": {"type": "string", "format": "binary"}}
SEGMENT_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: raw bytes with its image Content-Type (application/"
        "octet-stream is sniffed), or multipart/form-data with a part `image`.",
        "content": {
            **{media: _BINARY for media in RAW_MEDIA_TYPES},
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": RleResult,
        "description": "`png`: palette PNG, pixel value = class id; `overlay`: the image with "
        "class colours blended in (image/png); `rle`: COCO RLE per class "
        "(application/json).",
        "content": {"image/png": _BINARY},
        "headers": {
            "X-Model": {"description": "model name", "schema": {"type": "string"}},
            "X-Model-Version": {"description": "model version", "schema": {"type": "integer"}},
            "Server-Timing": {
                "description": "decode, queue, infer, encode durations (ms)",
                "schema": {"type": "string"},
            },
            "X-Request-ID": {
                "description": "the request id (echoed or generated)",
                "schema": {"type": "string"},
            },
        },
    },
    400: problem_doc("`invalid_image`: empty body, not a decodable image, truncated or corrupt"),
    401: problem_doc("`unauthorized`: API keys are configured and none valid was sent"),
    404: problem_doc("`model_not_found`: unknown model or version"),
    413: problem_doc(
        "`payload_too_large`: body over SEGSERVE_MAX_BODY_BYTES or image over SEGSERVE_MAX_PIXELS"
    ),
    415: problem_doc("`unsupported_media_type`: not an image, multipart or octet-stream"),
    422: problem_doc("`invalid_parameter`: bad query parameter"),
    500: problem_doc("`inference_failed` / `internal_error`"),
    503: problem_doc("`overloaded` (queue full; Retry-After) or `not_ready` (loading, draining)"),
    504: problem_doc("`deadline_exceeded`: waited longer than SEGSERVE_REQUEST_TIMEOUT_MS"),
}
