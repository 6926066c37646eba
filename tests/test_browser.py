"""The page at ``/``, ``/docs`` (its operations and "Try it out") and ``/redoc`` in a real
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium) against
real servers: the bundled model behind an API key for the page, the test models for the docs.

Without the browser these tests skip, loudly: ``make browser`` (run by .ci/run) installs it.
``UPDATE_SCREENSHOTS=1`` also writes the page's screenshot to docs/images/page.png.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest

from tests.images import quadrants, scene
from tests.support import ROOT, TINY_LABELS, Server, running_server, tiny_card, tiny_model

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="BROWSER TESTS SKIPPED: no chromium/chromedriver on this machine; "
    "`make browser` installs Debian's chromium and chromium-driver",
)
KEY = "page-test-key"
EXAMPLE = ROOT / "examples" / "shapes-2.jpg"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled model, with an API key: the page must work with one."""
    env = {"SEGSERVE_MODEL_REPOSITORY": str(ROOT / "models"), "SEGSERVE_API_KEYS": KEY}
    with running_server(env, tmp_path_factory.mktemp("page") / "server.log") as server:
        yield server


def wait(browser: webdriver.Chrome, condition, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    try:
        return WebDriverWait(browser, timeout).until(condition)
    except TimeoutException as exc:
        status = browser.find_element(By.ID, "status").text if "segserve" in browser.title else ""
        message = f"timed out on {browser.current_url}; page status: {status!r}"
        raise AssertionError(message) from exc


def reported_labels(server: Server, image: Path, **params: str) -> list[str]:
    """The classes the service reports for ``image`` (its RLE answer), by class id."""
    response = httpx.post(
        f"{server.base_url}/segment",
        params={"format": "rle", **params},
        files={"image": (image.name, image.read_bytes())},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    response.raise_for_status()
    return [m["label"] for m in response.json()["masks"]]


def legend_labels(browser: webdriver.Chrome) -> list[str]:
    return [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#legend tbody td.label")]


def test_upload_shows_the_overlay_and_a_legend_of_the_reported_classes(
    browser: webdriver.Chrome, bundled: Server, tmp_path: Path
) -> None:
    browser.get(bundled.base_url + "/")
    # Without the key the API refuses, and the page says so.
    wait(browser, lambda b: "401" in b.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "key").send_keys(KEY + "\n")
    wait(browser, lambda b: Select(b.find_element(By.ID, "model")).options)
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.text == "shapes-fcn"

    browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
    overlay = wait(
        browser,
        lambda b: b.find_element(By.CSS_SELECTOR, "#overlay[data-ready='true']"),
    )
    assert overlay.is_displayed()
    size = browser.execute_script("const c = arguments[0]; return [c.width, c.height];", overlay)
    assert size == [256, 256]  # the mask has the image's size
    expected = reported_labels(bundled, EXAMPLE)
    assert len(expected) > 1
    assert legend_labels(browser) == expected
    shares = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#legend td.share")]
    assert abs(sum(float(s.rstrip(" %")) for s in shares) - 100) < 0.5
    stages = browser.find_elements(By.CSS_SELECTOR, "#timing tr[data-stage]")
    assert [row.get_attribute("data-stage") for row in stages] == [
        "decode",
        "queue",
        "infer",
        "encode",
    ]
    assert browser.find_element(By.ID, "download-png").get_attribute("href").startswith("blob:")
    assert browser.find_element(By.ID, "download-rle").get_attribute("href").startswith("blob:")

    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(screenshot, ROOT / "docs" / "images" / "page.png")


def test_a_bundled_example_can_be_picked(browser: webdriver.Chrome, bundled: Server) -> None:
    browser.get(bundled.base_url + "/")
    browser.find_element(By.ID, "key").send_keys(KEY + "\n")
    wait(browser, lambda b: Select(b.find_element(By.ID, "model")).options)
    wait(browser, lambda b: len(Select(b.find_element(By.ID, "example")).options) > 1)
    Select(browser.find_element(By.ID, "example")).select_by_visible_text("shapes.jpg")
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#overlay[data-ready='true']"))
    assert legend_labels(browser) == reported_labels(bundled, ROOT / "examples" / "shapes.jpg")


def test_the_input_policy_can_be_chosen(browser: webdriver.Chrome, bundled: Server) -> None:
    browser.get(bundled.base_url + "/")
    browser.find_element(By.ID, "key").send_keys(KEY + "\n")
    wait(browser, lambda b: Select(b.find_element(By.ID, "model")).options)
    browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#overlay[data-ready='true']"))
    Select(browser.find_element(By.ID, "resize")).select_by_value("tiles")
    sent = "return performance.getEntriesByType('resource').map((e) => e.name);"
    wait(browser, lambda b: any("resize=tiles" in url for url in b.execute_script(sent)))
    expected = reported_labels(bundled, EXAMPLE, resize="tiles")
    wait(browser, lambda b: legend_labels(b) == expected)


def _upload(browser: webdriver.Chrome, server: Server, image: Path) -> object:
    browser.get(server.base_url + "/")
    wait(browser, lambda b: Select(b.find_element(By.ID, "model")).options)
    browser.find_element(By.ID, "file").send_keys(str(image))
    return wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#overlay[data-ready='true']"))


def test_classes_that_share_a_colour_are_told_apart(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """The page reads class ids from the PNG itself: a card may give two classes one colour."""
    card = tiny_card()
    black = card.classes[0].color
    classes = [c.model_copy(update={"color": black}) if c.id == 1 else c for c in card.classes]
    path = tmp_path / "models" / "tiny" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(tiny_model(card.model_copy(update={"classes": classes})), path)
    image = tmp_path / "quadrants.png"
    quadrants(64, 48).save(image)  # red, green / blue, white: classes 1, 2 / 0, 0
    env = {"SEGSERVE_MODEL_REPOSITORY": str(tmp_path / "models")}
    with running_server(env, tmp_path / "server.log") as server:
        overlay = _upload(browser, server, image)
        assert legend_labels(browser) == reported_labels(server, image) == TINY_LABELS
        shares = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#legend td.share")]
        assert shares == ["50.0 %", "25.0 %", "25.0 %"]
    # The red quadrant, drawn in the background's black, is painted; the background is not.
    corners = browser.execute_script(
        "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
        "return [d.data[3], d.data[d.data.length - 1]];",
        overlay,
    )
    assert corners == [255, 0]


def test_an_image_the_browser_cannot_show_still_shows_its_mask(
    browser: webdriver.Chrome, open_server: Server, tmp_path: Path
) -> None:
    image = tmp_path / "quadrants.tif"
    quadrants(64, 48).save(image)  # TIFF: segserve reads it, Chromium does not
    overlay = _upload(browser, open_server, image)
    assert legend_labels(browser) == reported_labels(open_server, image)
    height = browser.execute_script("return arguments[0].getBoundingClientRect().height;", overlay)
    assert height > 100  # the mask stands alone at its own aspect ratio, not squashed to 0


@pytest.fixture(scope="module")
def open_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SEGSERVE_MODEL_REPOSITORY": str(tiny_repo)}
    with running_server(env, tmp_path_factory.mktemp("docs") / "server.log") as server:
        yield server


def test_swagger_ui_renders_the_operations_from_bundled_assets(
    browser: webdriver.Chrome, open_server: Server
) -> None:
    browser.get(open_server.base_url + "/docs")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {
        e.get_attribute("data-path")
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/segment", "/models", "/models/{name}", "/healthz", "/readyz"} <= paths
    assert_only_this_server_was_asked(browser, open_server)


def assert_only_this_server_was_asked(browser: webdriver.Chrome, server: Server) -> None:
    """No request of the page went anywhere but to ``server`` (data: URIs aside)."""
    time.sleep(0.5)  # images and fonts start after the text is shown
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);"
    )
    elsewhere = [url for url in asked if not url.startswith((server.base_url, "data:"))]
    assert asked
    assert not elsewhere, elsewhere


def test_redoc_renders_the_operations_from_bundled_assets(
    browser: webdriver.Chrome, open_server: Server
) -> None:
    browser.get(open_server.base_url + "/redoc")
    wait(browser, lambda b: "Segment one image" in b.find_element(By.TAG_NAME, "body").text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "All served models" in body
    assert_only_this_server_was_asked(browser, open_server)


def test_swagger_try_it_out_on_segment_shows_the_mask(
    browser: webdriver.Chrome, open_server: Server, tmp_path: Path
) -> None:
    image = tmp_path / "scene.png"
    scene(1, 64, 48).save(image)
    browser.get(open_server.base_url + "/docs")
    block = wait(
        browser, lambda b: b.find_element(By.ID, "operations-inference-segment_segment_post")
    )
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(browser, lambda b: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    block.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(image))
    answer_types = block.find_element(By.CSS_SELECTOR, ".responses-wrapper select")
    Select(answer_types).select_by_visible_text("image/png")  # Accept: image/png -> the mask
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    shown = wait(
        browser, lambda b: block.find_element(By.CSS_SELECTOR, ".live-responses-table img")
    )
    assert shown.get_attribute("src").startswith("blob:")
    wait(browser, lambda b: b.execute_script("return arguments[0].naturalWidth;", shown) == 64)
