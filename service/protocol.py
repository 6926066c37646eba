"""The HTTP side of ``POST /segment``: which bodies are accepted and how they are read (size
capped while streaming), which output format the client asks for, and whether it is still there.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import ClientClosed, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.pipeline import OutputFormat

RAW_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "application/octet-stream",
)
MULTIPART = "multipart/form-data"
_ALIASES = {"image/jpg": "image/jpeg", "image/x-ms-bmp": "image/bmp"}


# Accept media range -> format, for requests without ?format=.
_ACCEPTS = {
    "application/json": OutputFormat.rle,
    "image/png": OutputFormat.png,
    "image/*": OutputFormat.png,
    "*/*": OutputFormat.png,
}


def accepted(headers: Headers) -> str | None:
    """The request's ``Accept`` as one list: several ``Accept`` headers are one list joined by
    commas (RFC 9110, 5.3)."""
    values = headers.getlist("accept")
    return ", ".join(values) if values else None


def negotiate(accept: str | None) -> OutputFormat:
    """The format the ``Accept`` header prefers (highest q; ties: first listed), else png."""
    best, best_q = OutputFormat.png, 0.0
    for entry in (accept or "").split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        fmt = _ACCEPTS.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = fmt, q
    return best


def media_type(headers: Headers) -> str:
    """The body's media type if accepted (an image type, octet-stream or multipart), else 415."""
    raw = headers.get("content-type")
    if raw is None:
        return "application/octet-stream"  # no claim at all: sniff the bytes
    media = raw.split(";", 1)[0].strip().lower()
    media = _ALIASES.get(media, media)
    if media in RAW_MEDIA_TYPES or media == MULTIPART:
        return media
    raise UnsupportedMediaType(
        f"Content-Type '{media}' is not accepted: send the image as {', '.join(RAW_MEDIA_TYPES)}"
        f", or as the part 'image' of {MULTIPART}"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes;
    ClientClosed when the client goes away before sending all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked or lying Content-Length: count what actually arrives
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            if chunk:
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosed(f"the client went away after {size} bytes of its body") from None
    # Most uploads arrive as one message: its bytes are the body, with no copy.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def image_part(headers: Headers, body: bytes) -> bytes:
    """The part ``image`` of a multipart body already read (and size-capped) in memory."""

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        headers, replay(), max_files=4, max_fields=16, max_part_size=len(body) + 1
    )
    parser.spool_max_size = len(body) + 1  # the body is in memory already: no temporary file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidImage(f"the multipart body cannot be parsed: {exc.message}") from exc
    try:
        part = form.get("image")
        if not isinstance(part, UploadFile):
            raise InvalidImage(
                "the multipart body has no file part named 'image' (curl -F image=@photo.jpg)"
            )
        return await part.read()
    finally:
        await form.close()


async def disconnected(request: Request) -> None:
    """Complete when the client of ``request``, whose body has been read, goes away."""
    # The body has been read: the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
