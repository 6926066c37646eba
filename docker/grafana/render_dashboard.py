"""Render the provisioned Grafana dashboard's panels from a real short run, for docs/DEPLOY.md.

Grafana needs Docker, which this project's machines lack; Prometheus does not (Debian package
`prometheus`). So: start `python -m service` on 127.0.0.1 (the bundled model, else the tests' tiny
model), let a local Prometheus scrape it every second, drive a bounded load in phases (steady,
busy, overload with a small queue, idle; a few bad images throughout), then evaluate each panel's
own PromQL from docker/grafana/dashboards/segserve.json through Prometheus's query API and draw
the results with matplotlib on the dashboard's grid. It is a rendering of the dashboard's queries,
not a Grafana screenshot.

    apt-get install prometheus     # once
    .venv/bin/python docker/grafana/render_dashboard.py docs/images/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: tests.support is a sibling package
from tests.support import free_port, running_server, write_tiny_model  # noqa: E402

DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "segserve.json"
BUNDLED = ROOT / "models" / "shapes-fcn" / "1" / "model.onnx"
SCRAPE_S = 1
RATE_INTERVAL = f"{4 * SCRAPE_S}s"  # Grafana's $__rate_interval is at least 4 scrape intervals
# (seconds, concurrent clients): steady, busy, overload (the queue is kept small), idle.
PHASES = [(20, 2), (20, 12), (15, 48), (10, 0)]
MAX_REQUESTS = 20_000


def sample_image() -> bytes:
    image = Image.new("RGB", (320, 240), (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 40, 130, 140), fill=(220, 40, 40))
    draw.rectangle((170, 60, 290, 200), fill=(40, 200, 60))
    draw.polygon([(160, 20), (220, 110), (100, 110)], fill=(40, 60, 220))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def drive_load(base_url: str) -> None:
    """Closed-loop clients per phase, plus one bad image a second; bounded in time and count."""
    good = sample_image()
    sent = 0

    async def client_loop(client: httpx.AsyncClient, until: float) -> None:
        nonlocal sent
        while time.monotonic() < until and sent < MAX_REQUESTS:
            sent += 1
            try:
                response = await client.post(
                    "/segment", content=good, headers={"Content-Type": "image/png"}
                )
                if response.status_code == 503:
                    await asyncio.sleep(0.05)  # as a client honouring Retry-After would, briefly
            except httpx.HTTPError:
                await asyncio.sleep(0.05)

    async def bad_images(client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            await client.post(
                "/segment", content=b"\x89PNG truncated", headers={"Content-Type": "image/png"}
            )
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        for seconds, clients in PHASES:
            until = time.monotonic() + seconds
            tasks = [client_loop(client, until) for _ in range(clients)]
            await asyncio.gather(
                *tasks,
                bad_images(client, until)
                if clients
                else asyncio.sleep(max(0.0, until - time.monotonic())),
            )
    print(f"sent {sent} segmentation requests", file=sys.stderr)


def start_prometheus(target: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        sys.exit("prometheus not found: apt-get install prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {  # JSON is YAML
                "global": {"scrape_interval": f"{SCRAPE_S}s"},
                "scrape_configs": [
                    {
                        "job_name": "segserve",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    sys.exit("prometheus did not become ready: " + (workdir / "prometheus.log").read_text())


def query(prometheus: str, expr: str, start: float, end: float, instant: bool) -> list[dict]:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$model", ".*")
    if instant:
        params: dict[str, Any] = {"query": expr, "time": end}
        path = "/api/v1/query"
    else:
        params = {"query": expr, "start": start, "end": end, "step": SCRAPE_S}
        path = "/api/v1/query_range"
    response = httpx.get(prometheus + path, params=params, timeout=30).json()
    if response["status"] != "success":
        raise RuntimeError(f"{expr}: {response}")
    return response["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


UNITS = {"s": ("seconds", 1.0), "reqps": ("requests / s", 1.0), "short": ("", 1.0)}


def draw(dashboard: dict, results: dict[int, list], start: float, out: Path) -> None:
    plt.style.use("dark_background")
    fig = plt.figure(figsize=(16, 13), facecolor="#111217")
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    grid = fig.add_gridspec(
        rows, 24, hspace=2.6, wspace=1.2, left=0.05, right=0.98, top=0.91, bottom=0.03
    )
    phases = ", ".join(f"{s} s x {c} clients" for s, c in PHASES)
    fig.suptitle(
        "segserve dashboard: each panel's PromQL evaluated by Prometheus over a real run"
        " (matplotlib rendering, not a Grafana screenshot)\n"
        f"load phases (dotted lines): {phases}; SEGSERVE_MAX_QUEUE=8 so the overload"
        " phase meets 503s",
        fontsize=11,
    )
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[pos["y"], :])
            ax.axis("off")
            ax.text(0, 0.2, panel["title"], fontsize=12, fontweight="bold", color="#d8d9da")
            continue
        ax = fig.add_subplot(
            grid[pos["y"] + 1 : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]]
        )
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], fontsize=10, loc="left", color="#d8d9da")
        unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "short"), ("", 1.0))[0]
        if panel["type"] == "table":
            draw_table(ax, results[panel["id"]])
        elif panel["type"] == "heatmap":
            draw_heatmap(ax, results[panel["id"]], start)
        else:
            for target, series_list in zip(panel["targets"], results[panel["id"]], strict=True):
                for series in series_list:
                    t, v = np.array(series["values"], dtype=float).T
                    ax.plot(
                        t - start, v, lw=1.4, label=legend(target["legendFormat"], series["metric"])
                    )
            for boundary in np.cumsum([seconds for seconds, _ in PHASES])[:-1]:
                ax.axvline(boundary, color="#cccccc", lw=1.0, ls=":")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="upper left", framealpha=0.3)
            ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        if panel["type"] != "table":
            ax.set_xlabel("seconds into the run", fontsize=7)
            ax.grid(alpha=0.15)
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())


def draw_heatmap(ax: Any, series_lists: list, start: float) -> None:
    (series_list,) = series_lists
    buckets = sorted(series_list, key=lambda s: float(s["metric"]["le"]))
    t = np.array(buckets[0]["values"], dtype=float)[:, 0]
    cumulative = np.array([[float(v) for _, v in s["values"]] for s in buckets])
    counts = np.diff(cumulative, axis=0, prepend=0)  # Grafana's "heatmap" format does the same
    labels = [s["metric"]["le"] for s in buckets]
    keep = [i for i, le in enumerate(labels) if le != "+Inf"]
    ax.imshow(
        counts[keep],
        aspect="auto",
        origin="lower",
        cmap="Blues",
        interpolation="nearest",
        extent=(t[0] - start, t[-1] - start, -0.5, len(keep) - 0.5),
    )
    ax.set_yticks(range(len(keep)), [f"≤{labels[i]}" for i in keep], fontsize=7)
    ax.set_ylabel("images per batch", fontsize=8)


def draw_table(ax: Any, series_lists: list) -> None:
    ax.axis("off")
    rows = [
        [s["metric"].get(k, "") for k in ("model", "version", "provider")]
        for series_list in series_lists
        for s in series_list
    ]
    table = ax.table(
        cellText=rows or [["-", "-", "-"]],
        colLabels=["model", "version", "provider"],
        loc="upper left",
        cellLoc="left",
    )
    table.scale(1, 1.6)
    for cell in table.get_celld().values():
        cell.set_facecolor("#181b1f")
        cell.set_edgecolor("#333")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repository = ROOT / "models"
        if not BUNDLED.exists():
            repository = tmp / "models"
            write_tiny_model(repository, name="tiny", size=128)
        env = {
            "SEGSERVE_MODEL_REPOSITORY": str(repository),
            "SEGSERVE_MAX_QUEUE": "8",
            "SEGSERVE_LOG_LEVEL": "warning",
        }
        with running_server(env, tmp / "server.log") as server:
            prometheus, prom_url = start_prometheus(server.base_url.removeprefix("http://"), tmp)
            try:
                time.sleep(3 * SCRAPE_S)
                start = time.time()
                asyncio.run(drive_load(server.base_url))
                end = time.time()
                time.sleep(2 * SCRAPE_S)  # the last scrape
                results = {
                    panel["id"]: [
                        query(prom_url, t["expr"], start, end, t.get("instant", False))
                        for t in panel["targets"]
                    ]
                    for panel in dashboard["panels"]
                    if panel["type"] != "row"
                }
            finally:
                prometheus.terminate()
                prometheus.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(dashboard, results, start, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
