"""A client for segserve: the Python API and ``python -m segserve_client``.

Needs only httpx, Pillow and NumPy (none of the server's dependencies)::

    from segserve_client import Client

    with Client("http://localhost:8000", api_key=None) as client:
        result = client.segment("photo.jpg")            # format png: a palette PNG
        labels = result.labels()                        # (H, W) uint8 class ids
        rle = client.segment("photo.jpg", fmt="rle").json()
        result.timing_ms                                # {"decode": 1.2, "queue": 0.1, ...}

``AsyncClient`` is the same with ``async with`` / ``await``. A 503 (``overloaded``,
``not_ready``) is retried after its ``Retry-After``, each wait capped at ``max_retry_wait_s``, at
most ``retries`` times; every other error raises ``SegserveError`` with the problem's ``code``.
"""

from segserve_client.client import AsyncClient, Client, Segmentation, SegserveError

__all__ = ["AsyncClient", "Client", "Segmentation", "SegserveError"]
