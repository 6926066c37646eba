"""``python -m segserve_client``: segment a folder of images, or list the served models.

    python -m segserve_client segment photos/ --out masks/ --format rle -j 8
    python -m segserve_client models

Exit status: 0 when every image was segmented (or had been before), 1 when any failed, 2 for
a usage error. The API key comes from ``--api-key`` or the ``SEGSERVE_API_KEY`` environment
variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import get_args

from segserve_client.client import AsyncClient, Client, Format, SegserveError
from segserve_client.folder import segment_folder


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m segserve_client", description=__doc__.split("\n")[0]
    )
    main.add_argument(
        "--url", default="http://localhost:8000", help="the server (default: %(default)s)"
    )
    main.add_argument(
        "--api-key",
        default=os.environ.get("SEGSERVE_API_KEY"),
        help="sent as 'Authorization: Bearer'; default: $SEGSERVE_API_KEY",
    )
    main.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per attempt (default: %(default)s)"
    )
    main.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries of a 503 (overloaded, not ready), each after its Retry-After "
        "(default: %(default)s)",
    )
    main.add_argument(
        "--max-retry-wait",
        type=float,
        default=10.0,
        help="longest wait before a retry, seconds (default: %(default)s)",
    )
    commands = main.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment every image under DIR; rerun to resume")
    segment.add_argument("dir", type=Path, help="folder of images (searched at any depth)")
    segment.add_argument("--out", type=Path, required=True, help="folder for the answers (created)")
    segment.add_argument(
        "--format",
        choices=get_args(Format),
        default="png",
        help="png: palette mask; rle: COCO RLE JSON (and coco_results.json); overlay: the "
        "image with the mask blended in (default: %(default)s)",
    )
    segment.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=8,
        help="requests in flight at once (default: %(default)s)",
    )
    segment.add_argument("--model", help="model name (default: the server's default model)")
    segment.add_argument("--version", type=int, help="model version (default: the latest)")
    segment.add_argument("--alpha", type=float, help="overlay opacity 0..1 (overlay only)")

    commands.add_parser("models", help="print GET /models")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "models":
        return _models(args)
    if not args.dir.is_dir():
        print(f"segserve_client: {args.dir} is not a folder", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("segserve_client: -j must be at least 1", file=sys.stderr)
        return 2
    summary = asyncio.run(_segment(args))
    print(summary.render())
    return 1 if summary.failed else 0


async def _segment(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    options = {"model": args.model, "version": args.version, "alpha": args.alpha}
    async with AsyncClient(
        args.url,
        api_key=args.api_key,
        timeout_s=args.timeout,
        retries=args.retries,
        max_retry_wait_s=args.max_retry_wait,
        max_connections=args.jobs,
    ) as client:
        return await segment_folder(client, args.dir, args.out, args.format, args.jobs, **options)


def _models(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
        try:
            print(json.dumps(client.models(), indent=2))
        except SegserveError as exc:
            print(f"segserve_client: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
