"""Input policies (docs/API.md, Input policies): stretch, letterbox, native and tiles on a real
server with ONNX models built here, and the geometry and blending they rest on."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service import policies
from service.imaging import prepare
from service.model_card import InputSpec, ModelCard
from service.pipeline import OutputFormat, prepare_input
from service.tiling import windows
from tests.images import encoded, png_declaring
from tests.support import (
    Server,
    expected_labels,
    metric_samples,
    png_labels,
    running_server,
    write_tiny_model,
)

POLICIES = ("stretch", "letterbox", "native", "tiles")
ODD_SIZES = [(1, 1), (1, 9), (9, 1), (37, 23), (70, 41), (200, 7)]
# Class 1 wins everywhere, whatever the pixels: the exact answer of every policy is all ones.
CONSTANT = {"weights": np.zeros((3, 3, 1, 1), np.float32), "bias": np.array([0, 1, 0], "f4")}
# A 5x5 window of the colour classifier: scores depend on the neighbours, so a window's edge
# sees zeros where the whole image has pixels, and naive tiling would show seams.
_COLOUR = np.array([[0, 0, 0], [2, -1, -1], [-1, 2, -1]], np.float32)
WIDE = {"weights": np.repeat(np.repeat(_COLOUR[:, :, None, None], 5, 2), 5, 3) / 25}


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Saturated random colours: every pixel clearly red, green or neither."""
    rng = np.random.default_rng(seed)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 0], [255, 255, 255]], np.uint8)
    return Image.fromarray(palette[rng.integers(0, 4, (height, width))])


def segment(client: httpx.Client, image: Image.Image, **params: object) -> np.ndarray:
    response = client.post(
        "/segment", params=params, content=encoded(image), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    labels = png_labels(response)
    assert labels.shape == (image.height, image.width)
    return labels


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    repo = tmp_path_factory.mktemp("policies") / "models"
    write_tiny_model(repo, "colour", size=32, tile=16, model={"any_size": True})
    write_tiny_model(repo, "constant", size=32, model={"any_size": True, **CONSTANT})
    write_tiny_model(repo, "fixed", size=32)  # takes only 32 x 32
    write_tiny_model(repo, "wide", size=32, tile=64, model={"any_size": True, **WIDE})
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_DEFAULT_MODEL": "colour",
        "SEGSERVE_MAX_TILES": "400",
    }
    with running_server(env, tmp_path_factory.mktemp("log") / "server.log") as running:
        yield running


@pytest.fixture
def client(server: Server) -> httpx.Client:
    with server.client() as client:
        yield client


# -- on the server ------------------------------------------------------------------------------
@pytest.mark.parametrize("resize", POLICIES)
@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
def test_a_constant_model_gives_a_constant_mask_of_the_images_size(
    client: httpx.Client, resize: str, width: int, height: int
) -> None:
    labels = segment(client, noise(width, height), model="constant", resize=resize)
    assert (labels == 1).all()


@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
def test_native_crops_its_padding_exactly(client: httpx.Client, width: int, height: int) -> None:
    image = noise(width, height, seed=width * height)
    expected = expected_labels(np.asarray(image))  # pixel for pixel: nothing resized
    assert (segment(client, image, resize="native") == expected).all()


@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
def test_tiles_at_scale_1_answer_pixel_for_pixel(
    client: httpx.Client, width: int, height: int
) -> None:
    image = noise(width, height, seed=width + height)
    expected = expected_labels(np.asarray(image))
    assert (segment(client, image, resize="tiles", tile=16, overlap=0.25) == expected).all()


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_blended_tiles_show_no_seam_where_windows_meet(
    client: httpx.Client, overlap: float
) -> None:
    image = noise(160, 96, seed=3)  # multiples of the stride: native runs it unpadded
    whole = segment(client, image, model="wide", resize="native")  # one input: no borders
    tiled = segment(client, image, model="wide", resize="tiles", tile=32, overlap=overlap)
    assert (tiled == whole).all()
    # Windows side by side instead: each edge sees zeros where the image goes on, and it shows.
    butted = segment(client, image, model="wide", resize="tiles", tile=32, overlap=0)
    assert (butted != whole).any()


def test_letterbox_keeps_the_aspect_ratio_and_crops_the_padding(client: httpx.Client) -> None:
    # 64 x 16 fits 32 x 8 in the 32 x 32 input: left half red, right half green.
    image = Image.new("RGB", (64, 16), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 32, 16))
    labels = segment(client, image, resize="letterbox")
    assert (labels[:, :32] == 1).all()
    assert (labels[:, 32:] == 2).all()


def test_stretch_stays_the_default_of_a_card_that_names_no_policy(client: httpx.Client) -> None:
    info = client.get("/models/fixed").json()["versions"][0]["input"]
    assert info["resize"] == "stretch"
    image = noise(64, 48, seed=5)
    assert (segment(client, image, model="fixed") == segment(client, image, model="fixed",
                                                              resize="stretch")).all()  # fmt: skip


def test_native_images_of_mixed_sizes_share_batches_and_answer_as_alone(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "colour", size=32, resize="native", model={"any_size": True})
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate([(40, 30), (50, 45), (61, 60)] * 4)]
    held = {"SEGSERVE_MAX_BATCH_DELAY_MS": "300", "SEGSERVE_BATCH_EAGER": "false"}
    with running_server(
        {"SEGSERVE_MODEL_REPOSITORY": str(repo), **held}, tmp_path / "server.log"
    ) as server:

        def one(image: Image.Image) -> np.ndarray:
            with server.client() as client:
                return segment(client, image)

        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(one, images))
        alone = [one(image) for image in images]
        with server.client() as client:
            samples = metric_samples(client)
    for image, batched, solo in zip(images, together, alone, strict=True):
        assert (batched == solo).all()
        assert (solo == expected_labels(np.asarray(image))).all()
    batches = sum(v for (n, _), v in samples.items() if n == "segserve_batch_size_count")
    assert batches < 2 * len(images)  # 12 together + 12 alone: some of them shared a batch


def test_tiles_of_concurrent_requests_answer_as_alone(client: httpx.Client, server: Server) -> None:
    images = [noise(90, 70, seed=10 + i) for i in range(6)]

    def one(image: Image.Image) -> np.ndarray:
        with server.client() as own:
            return segment(own, image, resize="tiles", tile=16)

    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(one, images))
    for image, labels in zip(images, together, strict=True):
        assert (labels == segment(client, image, resize="tiles", tile=16)).all()


@pytest.mark.parametrize("fmt", ["rle", "overlay"])
def test_every_format_comes_at_the_images_size_under_tiles(client: httpx.Client, fmt: str) -> None:
    image = noise(53, 29, seed=8)
    response = client.post(
        "/segment",
        params={"resize": "tiles", "tile": 16, "format": fmt},
        content=encoded(image),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 200
    if fmt == "rle":
        body = response.json()
        assert (body["width"], body["height"]) == (53, 29)
        assert sum(m["area"] for m in body["masks"]) <= 53 * 29
    else:
        assert Image.open(io.BytesIO(response.content)).size == (53, 29)


def test_exif_orientation_is_applied_before_the_policy(client: httpx.Client) -> None:
    image = noise(30, 20, seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    response = client.post(
        "/segment", params={"resize": "native"}, content=buffer.getvalue(),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    upright = image.transpose(Image.Transpose.ROTATE_270)
    assert (png_labels(response) == expected_labels(np.asarray(upright))).all()


@pytest.mark.parametrize("resize", POLICIES)
def test_a_decompression_bomb_is_refused_before_any_work(client: httpx.Client, resize: str) -> None:
    response = client.post(
        "/segment", params={"resize": resize}, content=png_declaring(30_000, 30_000),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_too_many_tiles_is_refused_with_the_limit(client: httpx.Client) -> None:
    response = client.post(
        "/segment", params={"resize": "tiles", "tile": 16, "overlap": 0.5},
        content=encoded(noise(400, 300)), headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert response.status_code == 413
    assert "limit is 400" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"resize": "native"}, "any input size"),
        ({"resize": "tiles", "tile": 16}, "tile=32"),
        ({"resize": "sideways"}, "resize"),
        ({"resize": "tiles", "overlap": 0.95}, "overlap"),
        ({"resize": "tiles", "tile": 8}, "tile"),
        ({"resize": "native", "max_side": 0}, "max_side"),
        ({"resize": "tiles", "scale": 0}, "scale"),
    ],
)
def test_a_policy_the_model_cannot_run_is_a_clear_422(
    client: httpx.Client, params: dict, needle: str
) -> None:
    response = client.post(
        "/segment", params={"model": "fixed", **params}, content=encoded(noise(20, 20)),
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_parameter"
    assert needle in response.json()["detail"]


# -- the geometry and the blending --------------------------------------------------------------
SPEC = InputSpec(height=32, width=48)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 100, 1000])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_windows_cover_every_pixel_and_stay_inside(length: int, overlap: float) -> None:
    starts = policies.tile_origins(length, 16, overlap)
    covered = np.zeros(max(length, 16), bool)
    for start in starts:
        covered[start : start + 16] = True
    assert covered[:length].all()
    assert starts == sorted(set(starts))
    assert starts[-1] == max(0, length - 16)


def test_the_blending_weight_peaks_in_the_middle_and_never_reaches_zero() -> None:
    weight = policies.tile_weight(64)
    assert weight.shape == (64, 64)
    assert weight[31:33, 31:33].min() > 0.99
    assert 0 < weight.min() <= weight[0, 0] < 1e-5


@pytest.mark.parametrize(("width", "height"), [(5, 3), (64, 64), (130, 70), (77, 200)])
def test_stitching_windows_of_a_pointwise_score_map_gives_its_argmax(
    width: int, height: int
) -> None:
    rng = np.random.default_rng(width)
    scores = rng.integers(-50, 50, (4, height, width)).astype(np.float32)
    scores[rng.integers(0, 4, (height, width)), *np.indices((height, width))] += 100  # no ties
    tile = 32
    stitcher = policies.Stitcher((width, height), tile, 4)
    xs = policies.tile_origins(width, tile, 0.25)
    for y in policies.tile_origins(height, tile, 0.25):
        padded = np.zeros((4, max(height, y + tile), max(width, xs[-1] + tile)), np.float32)
        padded[:, :height, :width] = scores
        for x in xs:
            stitcher.add(y, x, padded[:, y : y + tile, x : x + tile])
    assert (stitcher.finish() == scores.argmax(axis=0)).all()


def test_native_buckets_pad_to_the_stride_in_32_px_steps() -> None:
    policy = policies.resolve(SPEC, policies.PolicyRequest(resize="native"), any_size=True)
    assert policies.content_size(policy, SPEC, (4000, 3000)) == (1024, 768)
    assert policies.input_shape(policy, SPEC, (1024, 768)) == (768, 1024)
    assert policies.input_shape(policy, SPEC, (65, 1)) == (32, 96)
    assert policies.input_shape(policy, SPEC, (640, 480)) == (480, 640)
    small = policies.PolicyRequest(resize="native", max_side=100)
    assert policies.content_size(policies.resolve(SPEC, small, any_size=True), SPEC, (50, 30)) == (
        50,
        30,
    )  # never scaled up


def test_letterbox_fits_the_long_side() -> None:
    policy = policies.resolve(SPEC, policies.PolicyRequest(resize="letterbox"), any_size=False)
    assert policies.content_size(policy, SPEC, (400, 100)) == (48, 12)
    assert policies.content_size(policy, SPEC, (100, 400)) == (8, 32)
    assert policies.input_shape(policy, SPEC, (48, 12)) == (32, 48)


@pytest.mark.parametrize(("resize", "edge"), [("native", True), ("letterbox", False)])
def test_native_pads_with_the_image_s_edges_and_letterbox_with_zeros(
    resize: str, edge: bool
) -> None:
    spec = InputSpec(height=32, width=48, mean=(0.5, 0.5, 0.5), std=(1, 1, 1))
    card = ModelCard.with_default_colors(["background", "thing"], name="pad", input=spec)
    image = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    policy = policies.resolve(spec, policies.PolicyRequest(resize=resize), any_size=True)

    x = prepare_input(encoded(Image.fromarray(image), "PNG"), card, OutputFormat.png, 10**6, policy)

    w, h = x.content  # letterbox: scaled to fit, 43 x 32
    assert (x.x.shape[1:], x.content) == ((32, 64), (40, 30)) if edge else ((32, 48), (43, 32))
    expected = np.repeat(x.x[:, :h, w - 1 : w], x.x.shape[2] - w, axis=2) if edge else 0
    np.testing.assert_array_equal(x.x[:, :h, w:], expected)
    expected = np.repeat(x.x[:, h - 1 : h], x.x.shape[1] - h, axis=1) if edge else 0
    np.testing.assert_array_equal(x.x[:, h:], expected)


def test_a_window_past_the_image_s_edge_repeats_it() -> None:
    spec = InputSpec(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(1, 1, 1))
    card = ModelCard.with_default_colors(["background", "thing"], name="pad", input=spec)
    image = Image.fromarray(np.random.default_rng(8).integers(0, 256, (6, 10, 3), np.uint8))

    (window,) = windows(image, [(0, 0)], 16, card)

    np.testing.assert_array_equal(
        window[:, :6, :10], prepare(image, spec.model_copy(update={"height": 6, "width": 10}))
    )
    np.testing.assert_array_equal(window[:, :6, 10:], np.repeat(window[:, :6, 9:10], 6, axis=2))
    np.testing.assert_array_equal(window[:, 6:], np.repeat(window[:, 5:6], 10, axis=1))


def test_the_queue_budget_counts_every_shape_of_a_version(tmp_path: Path) -> None:
    """``SEGSERVE_MAX_QUEUE`` is the version's, whatever the shapes: native images of six
    buckets, held by a long batch window, fill a queue of 2 and the other four are refused."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "colour", size=32, resize="native", model={"any_size": True})
    held = {
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_MAX_QUEUE": "2",
        "SEGSERVE_MAX_BATCH_DELAY_MS": "3000",
        "SEGSERVE_BATCH_EAGER": "false",
        "SEGSERVE_REQUEST_TIMEOUT_MS": "1500",  # the queued two: 504 before their batch forms
    }
    images = [noise(side, side - 10, seed=side) for side in (40, 70, 100, 130, 160, 190)]
    with running_server(held, tmp_path / "server.log") as server:

        def status(image: Image.Image) -> int:
            with server.client() as client:
                data = encoded(image)
                headers = {"Content-Type": "image/png"}
                return client.post("/segment", content=data, headers=headers).status_code

        with ThreadPoolExecutor(len(images)) as pool:
            codes = sorted(pool.map(status, images))
    assert codes == [503, 503, 503, 503, 504, 504]


def test_a_tiles_request_alone_fits_a_small_queue(tmp_path: Path) -> None:
    """Its windows queue at most half the queue at once, so it is never refused by them."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "colour", size=32, model={"any_size": True})
    small = {"SEGSERVE_MODEL_REPOSITORY": str(repo), "SEGSERVE_MAX_QUEUE": "2"}
    image = noise(200, 150, seed=7)  # 7 x 5 windows of 32 at overlap 0, batches of up to 8
    with running_server(small, tmp_path / "server.log") as server, server.client() as client:
        tiled = segment(client, image, resize="tiles", tile=32, overlap=0)
        assert (tiled == expected_labels(np.asarray(image))).all()


def test_no_batch_holds_more_than_max_batch_pixels(tmp_path: Path) -> None:
    """Native images of the model's own size share its batches, and those too are bounded."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "colour", size=32, resize="native", model={"any_size": True})
    held = {
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_MAX_BATCH_PIXELS": str(2 * 32 * 32),
        "SEGSERVE_MAX_BATCH_DELAY_MS": "300",
        "SEGSERVE_BATCH_EAGER": "false",
    }
    images = [noise(32, 32, seed=i) for i in range(8)]
    with running_server(held, tmp_path / "server.log") as server:

        def one(image: Image.Image) -> np.ndarray:
            with server.client() as client:
                return segment(client, image)

        with ThreadPoolExecutor(len(images)) as pool:
            for image, labels in zip(images, pool.map(one, images), strict=True):
                assert (labels == expected_labels(np.asarray(image))).all()
        with server.client() as client:
            samples = metric_samples(client)
    version = {("model", "colour"), ("version", "1")}
    batches = samples[("segserve_batch_size_count", frozenset(version))]
    at_most_two = samples[("segserve_batch_size_bucket", frozenset(version | {("le", "2.0")}))]
    assert batches >= 4
    assert at_most_two == batches
