"""The drawing page in headless Chromium (Debian's, driven by Playwright): draw, upload, clear.

The real app serves a model trained by the real trainer, on a loopback port in a thread.
Browsers are never downloaded: without a ``chromium`` on PATH the tests skip.
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium on PATH (apt install chromium)")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def base_url(trained_model_path):
    """http://127.0.0.1:<port> of the real app, served by werkzeug in a background thread."""
    from werkzeug.serving import make_server

    from server import create_app

    app = create_app({"MODEL_PATH": str(trained_model_path)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh phone-sized page on the app's index, failing on any JavaScript error."""
    context = browser.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium reports what the Content-Security-Policy blocked on the console
    page.on("console", lambda msg: "Content Security Policy" in msg.text
            and errors.append(msg.text))
    page.goto(base_url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw polylines with the mouse; points are fractions of the canvas' displayed size."""
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def canvas_is_blank(page) -> bool:
    return page.evaluate("""() => {
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return d.every(v => v === 255);
    }""")


def rendered_digit_png(digit: int) -> bytes:
    """A dark digit in DejaVu Sans Bold, off-centre on a light grey 240x180 PNG."""
    image = Image.new("L", (240, 180), 225)
    font = ImageFont.truetype(str(FONT), 120)
    ImageDraw.Draw(image).text((40, 20), str(digit), fill=30, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def expect_prediction(page, digit: int) -> None:
    expect = sync_api.expect
    expect(page.locator("#digit")).to_have_text(str(digit), timeout=TIMEOUT_MS)
    expect(page.locator("#seen")).to_be_visible()
    expect(page.locator("#bars li.top .label")).to_have_text(str(digit))
    expect(page.locator("#status")).to_contain_text(f"says {digit}")


def test_page_is_accessible_and_offline(page, base_url):
    expect = sync_api.expect
    expect(page).to_have_title("digitgrad: draw a digit")
    expect(page.get_by_role("button", name="Clear")).to_be_visible()
    expect(page.get_by_label("Choose an image…")).to_be_attached()
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    assert page.locator("#bars li").count() == 10
    # everything the page loads comes from the app itself: no CDN
    urls = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(base_url) for u in urls), urls


def test_page_is_served_with_security_headers(page, base_url):
    headers = page.request.get(base_url + "/").headers
    assert headers["x-content-type-options"] == "nosniff"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_draw_a_seven_stroke_by_stroke(page):
    draw(page, [
        [(0.25, 0.2), (0.5, 0.2), (0.75, 0.2)],  # the bar
        [(0.75, 0.2), (0.62, 0.45), (0.5, 0.65), (0.42, 0.85)],  # the stem
    ])
    expect_prediction(page, 7)
    assert not canvas_is_blank(page)


def test_draw_a_one(page):
    draw(page, [[(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)]])
    expect_prediction(page, 1)


def test_draw_a_one_with_a_finger(browser, base_url):
    """Real touch input (Chromium's touch emulation): pointer events of type "touch"."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    try:
        page = context.new_page()
        page.goto(base_url + "/")
        box = page.locator("#canvas").bounding_box()
        cdp = context.new_cdp_session(page)
        x = box["x"] + 0.5 * box["width"]
        points = [box["y"] + box["height"] * (0.15 + 0.7 * i / 20) for i in range(21)]
        cdp.send("Input.dispatchTouchEvent",
                 {"type": "touchStart", "touchPoints": [{"x": x, "y": points[0]}]})
        for y in points[1:]:
            cdp.send("Input.dispatchTouchEvent",
                     {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect_prediction(page, 1)
        assert page.evaluate("() => window.scrollY") == 0, "drawing must not scroll the page"
    finally:
        context.close()


def evidence_colours(page) -> dict:
    """How many of the evidence canvas' 28x28 pixels are coloured, and how many red (for the
    answer) and blue (against it)."""
    return page.evaluate("""() => {
        const c = document.getElementById('evidence');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const n = {coloured: 0, red: 0, blue: 0};
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] === 0) continue;
            n.coloured++;
            if (d[i] > d[i + 2]) n.red++; else n.blue++;
        }
        return n;
    }""")


def test_the_evidence_map_overlays_what_the_model_saw(page):
    """?explain=1: the 28x28 map drawn over the image the model saw, red ink for the answer
    and blue against it, with its legend; it can be hidden, and Clear removes it."""
    draw(page, [
        [(0.25, 0.2), (0.5, 0.2), (0.75, 0.2)],
        [(0.75, 0.2), (0.62, 0.45), (0.5, 0.65), (0.42, 0.85)],
    ])
    expect_prediction(page, 7)
    expect = sync_api.expect
    expect(page.locator("#evidence")).to_be_visible()
    legend = page.locator("#evidence-legend")
    expect(legend).to_be_visible()
    expect(legend).to_contain_text("say 7")
    expect(legend.locator(".scale")).to_be_visible()
    colours = evidence_colours(page)
    assert colours["red"] > 10 and colours["coloured"] < 28 * 28 / 2, colours  # on the ink only
    seen, evidence = (page.locator(s).bounding_box() for s in ("#seen", "#evidence"))
    assert seen == evidence  # exactly over the image

    page.get_by_label("Show the evidence").uncheck()
    expect(page.locator("#evidence")).to_be_hidden()
    expect(page.locator("#seen")).to_be_visible()
    page.get_by_label("Show the evidence").check()
    expect(page.locator("#evidence")).to_be_visible()

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#evidence")).to_be_hidden()
    expect(legend).to_be_hidden()


def test_upload_a_file_then_clear(page):
    page.locator("#file").set_input_files(
        {"name": "three.png", "mimeType": "image/png", "buffer": rendered_digit_png(3)})
    expect_prediction(page, 3)
    assert not canvas_is_blank(page)  # the file is shown on the canvas

    page.get_by_role("button", name="Clear").click()
    expect = sync_api.expect
    expect(page.locator("#digit")).to_have_text("–")
    expect(page.locator("#seen")).to_be_hidden()
    expect(page.locator("#bars li.top")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text("Cleared")
    assert canvas_is_blank(page)


def test_bad_file_shows_the_error(page):
    page.locator("#file").set_input_files(
        {"name": "notes.txt", "mimeType": "image/png", "buffer": b"this is not an image"})
    expect = sync_api.expect
    expect(page.locator("#status")).to_have_class("status error", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("could not be decoded")
    expect(page.locator("#digit")).to_have_text("–")


def rendered_number_png(text: str) -> bytes:
    """``text`` in DejaVu Sans Bold, digits a little apart, dark on light grey."""
    font = ImageFont.truetype(str(FONT), 90)
    image = Image.new("L", (70 * len(text) + 60, 160), 225)
    draw = ImageDraw.Draw(image)
    for i, char in enumerate(text):
        draw.text((30 + 70 * i, 20), char, fill=30, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def expect_number(page, number: str | None, digits: int) -> None:
    """The page shows a number of ``digits`` digits (``number`` exactly, unless None), one
    entry per digit, and no single-digit bars."""
    expect = sync_api.expect
    expect(page.locator("#number-digits li")).to_have_count(digits, timeout=TIMEOUT_MS)
    reads = page.locator("#number-digits li .read").all_inner_texts()
    shown = "".join(reads)
    if number is not None:
        assert shown == number, reads
    expect(page.locator("#digit")).to_have_text(shown)
    expect(page.locator("#status")).to_contain_text(f"reads {shown}")
    expect(page.locator("#bars")).to_be_hidden()


def test_number_mode_reads_a_file_then_a_drawing(page):
    page.get_by_label("A number").check()
    box = page.locator("#canvas").bounding_box()
    assert box["width"] > 1.5 * box["height"], "number mode gives a wide canvas"
    page.locator("#file").set_input_files(
        {"name": "number.png", "mimeType": "image/png", "buffer": rendered_number_png("407")})
    expect_number(page, None, 3)  # font digits: the briefly trained model may misread one

    page.get_by_role("button", name="Clear").click()
    draw(page, [
        [(0.2, 0.15), (0.2, 0.5), (0.2, 0.85)],  # a 1 on the left
        [(0.55, 0.2), (0.68, 0.2), (0.8, 0.2)],  # a 7 on the right: its bar
        [(0.8, 0.2), (0.74, 0.45), (0.68, 0.65), (0.64, 0.85)],  # and its stem
    ])
    expect_number(page, "17", 2)

    page.get_by_label("One digit").check()  # back: a square canvas and the ten bars
    sync_api.expect(page.locator("#bars")).to_be_visible()
    sync_api.expect(page.locator("#number-digits")).to_be_hidden()


def test_a_drawing_that_is_not_a_digit_is_said_so_with_the_closest_guess(page):
    """A star: the model's decision refuses it, and the page says so and still shows the
    closest digit with its (low) confidence."""
    points = [(0.5 + 0.38 * np.cos(a), 0.5 + 0.38 * np.sin(a))
              for a in np.deg2rad(np.arange(6) * 144 - 90)]
    draw(page, [points])
    expect = sync_api.expect
    expect(page.locator("#status")).to_contain_text("doesn't look like a digit",
                                                    timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("closest guess")
    expect(page.locator("#digit")).not_to_have_text("–")
    expect(page.locator("#bars li.top")).to_have_count(1)
