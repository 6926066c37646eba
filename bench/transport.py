"""How the load generator sends its one request over and over: httpx, or a raw HTTP/1.1 client.

Both post the same pre-built body to the same URL on keep-alive connections and return
``(status, body)``, where status is the HTTP code as text or the exception's class name.

``httpx`` is the reference client. ``raw`` writes the pre-encoded request bytes straight to an
asyncio stream and reads a Content-Length (or chunked) answer: several times less client CPU
per request, which matters when the client shares 2 cores with the server it measures.
"""

from __future__ import annotations

import asyncio
from typing import Protocol
from urllib.parse import urlsplit

import httpx


class Transport(Protocol):
    async def post(self) -> tuple[str, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxTransport:
    def __init__(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float, connections: int
    ) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(timeout=timeout_s, limits=limits)
        self._url, self._body, self._headers = url, body, headers

    async def post(self) -> tuple[str, bytes]:
        try:
            response = await self._client.post(self._url, content=self._body, headers=self._headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__, b""
        return str(response.status_code), response.content

    async def aclose(self) -> None:
        await self._client.aclose()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[str, bytes, bool]:
        """Send ``request``; return (status, body, keep_alive)."""
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed by the server")
        status = status_line.split(b" ", 2)[1].decode()
        length, chunked, keep_alive = None, False, True
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = value != b"close"
        if chunked:
            body = await self._chunks()
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:  # no framing: the body runs to the end of the connection
            body, keep_alive = await self.reader.read(), False
        return status, body, keep_alive

    async def _chunks(self) -> bytes:
        parts = []
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()
        while (await self.reader.readline()) not in (b"\r\n", b""):  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


class RawTransport:
    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [
            f"POST {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self._request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self._timeout_s = timeout_s
        self._idle: list[_Connection] = []

    async def post(self) -> tuple[str, bytes]:
        connection = self._take_idle()
        try:
            async with asyncio.timeout(self._timeout_s):
                if connection is not None:
                    try:
                        status, body, keep_alive = await connection.exchange(self._request)
                    except ConnectionResetError:
                        # The server closed this idle keep-alive connection (uvicorn: after 5 s)
                        # as we reused it, before reading the request: send it on a new one.
                        connection.close()
                        connection = None
                if connection is None:
                    connection = _Connection(*await asyncio.open_connection(self._host, self._port))
                    status, body, keep_alive = await connection.exchange(self._request)
        except (OSError, EOFError, ValueError, IndexError, TimeoutError) as exc:
            if connection is not None:
                connection.close()
            return type(exc).__name__, b""
        if keep_alive:
            self._idle.append(connection)
        else:
            connection.close()
        return status, body

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.close()
        return None

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
