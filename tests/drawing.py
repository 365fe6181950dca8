"""Test images shared by several test modules (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def digit_png(size: int = 64, fmt: str = "PNG") -> bytes:
    """A dark "7" on white paper, like a scan: something imaging accepts."""
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    s = size / 64
    points = [(16 * s, 14 * s), (48 * s, 14 * s), (28 * s, 52 * s)]
    draw.line(points, fill=0, width=max(1, int(6 * s)))
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()
