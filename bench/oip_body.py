"""One Open Inference Protocol infer request for the load generator, and the PNG out of its
answer: input ``image`` BYTES [1], output ``png`` asked for as binary data (Triton's binary
tensor data extension), or, for servers without it (MLServer), both as base64 text in JSON.

    body, headers = infer_request(jpeg, base64_json=False)
    png = png_of(answer_body)
"""

from __future__ import annotations

import base64
import json
import struct


def infer_request(image: bytes, *, base64_json: bool = False) -> tuple[bytes, dict[str, str]]:
    if base64_json:
        tensor = {
            "name": "image",
            "shape": [1],
            "datatype": "BYTES",
            "data": [base64.b64encode(image).decode()],
            "parameters": {"content_type": "base64"},
        }
        body = json.dumps({"inputs": [tensor], "outputs": [{"name": "png"}]}).encode()
        return body, {"content-type": "application/json"}
    raw = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "png", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + raw, headers


def png_of(body: bytes) -> bytes:
    """The first ``png`` element of an infer answer: binary data after the JSON header, or a
    base64 (MLServer) or text element of the JSON."""
    # latin-1 maps each byte to one character, so the decoder's end index is a byte offset.
    head, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    (output,) = (o for o in head["outputs"] if o["name"] == "png")
    if "data" not in output:
        binary = body[end:]
        (size,) = struct.unpack_from("<I", binary)
        return binary[4 : 4 + size]
    (element,) = output["data"]
    return base64.b64decode(element)
