"""Whole-number accuracy of POST /predict/number on generated numbers of 2 to 6 digits.

Two sources side by side, built deterministically from ``--seed``:

* fonts: one Debian font per number (DejaVu, Liberation, FreeFont), digits rendered apart
  (gaps of 10-60 % of the font size), dark ink on light paper with noise, PNG or JPEG;
* MNIST: test-set digits (unseen in training) cropped to their ink columns and set side by
  side 3-12 px apart with a little vertical jitter, enlarged 2-4x, half of them inverted to
  dark on white (needs $MNIST_DIR or ``--mnist-dir``).

Every number goes through the real app (Flask's test client, the same route, limits and
model as in production). Printed per source and length: numbers read exactly, numbers cut
into the right count of digits, and digit accuracy among those.

    python -m bench.written_numbers --model model.npz [--per-length 200] [--seed 0]
                                    [--mnist-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.uploads import fonts, read_idx
from server import create_app

LENGTHS = range(2, 7)


def _encode(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    out = io.BytesIO()
    if rng.random() < 0.5:
        image.save(out, format="PNG")
        return out.getvalue(), "image/png"
    image.convert("RGB").save(out, format="JPEG", quality=int(rng.integers(70, 95)))
    return out.getvalue(), "image/jpeg"


def font_number(text: str, font_path: Path, rng: np.random.Generator) -> tuple[bytes, str]:
    """``text`` in one font, each digit drawn apart, on noisy light paper."""
    size = int(rng.integers(40, 110))
    font = ImageFont.truetype(str(font_path), size)
    gaps = [int(size * rng.uniform(0.1, 0.6)) for _ in text]
    margin = size // 2
    width = int(sum(font.getlength(c) for c in text)) + sum(gaps) + 2 * margin
    paper = int(rng.integers(200, 256))
    image = Image.new("L", (width, int(size * 1.6) + 2 * margin), paper)
    draw = ImageDraw.Draw(image)
    x = margin
    ink = int(rng.integers(0, 70))
    for char, gap in zip(text, gaps):
        draw.text((x, margin + int(rng.integers(0, size // 6 + 1))), char, fill=ink, font=font)
        x += int(font.getlength(char)) + gap
    pixels = np.asarray(image, np.float64) + rng.normal(0, 4, (image.height, image.width))
    return _encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), rng)


def mnist_number(images: list[np.ndarray], rng: np.random.Generator) -> tuple[bytes, str]:
    """MNIST digits (light on black) cropped to their ink columns, set side by side."""
    parts = []
    for digit in images:
        cols = np.flatnonzero(digit.max(axis=0) > 30)
        crop = digit[:, cols[0]:cols[-1] + 1]
        shift = int(rng.integers(-3, 4))
        parts += [np.roll(crop, shift, axis=0), np.zeros((28, int(rng.integers(3, 13))), np.uint8)]
    row = np.pad(np.hstack(parts[:-1]), 12)
    scale = float(rng.uniform(2, 4))
    image = Image.fromarray(row).resize((int(row.shape[1] * scale), int(row.shape[0] * scale)),
                                        Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = Image.eval(image, lambda v: 255 - v)
    return _encode(image, rng)


def build(per_length: int, seed: int, mnist: tuple | None) -> list[tuple[str, str, bytes, str]]:
    """(source, number, image bytes, content type) for every generated number."""
    rng = np.random.default_rng(seed)
    font_paths = fonts()
    cases = []
    for length in LENGTHS:
        for _ in range(per_length):
            text = "".join(str(d) for d in rng.integers(0, 10, length))
            font = font_paths[int(rng.integers(len(font_paths)))]
            cases.append(("fonts", text, *font_number(text, font, rng)))
            if mnist is not None:
                images, labels = mnist
                picks = rng.integers(0, len(labels), length)
                text = "".join(str(labels[i]) for i in picks)
                cases.append(("MNIST", text, *mnist_number([images[i] for i in picks], rng)))
    return cases


def main(argv: list[str] | None = None) -> int:
    """Build the numbers, read them through the app, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.written_numbers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("model.npz"))
    parser.add_argument("--per-length", type=int, default=200,
                        help="numbers per length (2-6 digits) and source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", type=Path,
                        default=Path(os.environ["MNIST_DIR"]) if "MNIST_DIR" in os.environ
                        else None)
    args = parser.parse_args(argv)

    mnist = None
    if args.mnist_dir is not None:
        mnist = (read_idx(args.mnist_dir / "t10k-images-idx3-ubyte.gz"),
                 read_idx(args.mnist_dir / "t10k-labels-idx1-ubyte.gz"))
    else:
        print("no --mnist-dir or $MNIST_DIR: fonts only")
    client = create_app({"MODEL_PATH": str(args.model)}).test_client()
    # per (source, length): [numbers, read exactly, right digit count, digits right, digits]
    tally: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    refused: dict[str, int] = defaultdict(int)
    for source, text, data, content_type in build(args.per_length, args.seed, mnist):
        row = tally[source, len(text)]
        row[0] += 1
        response = client.post("/predict/number", data=data, content_type=content_type)
        if response.status_code != 200:
            refused[f"{source} {response.get_json()['error']['code']}"] += 1
            continue
        number = response.get_json()["number"]
        row[1] += number == text
        if len(number) == len(text):
            row[2] += 1
            row[3] += sum(a == b for a, b in zip(number, text))
            row[4] += len(text)

    print(f"model: {args.model}, seed {args.seed}, {args.per_length} numbers per length")
    print(f"{'source':<7} {'digits':>6} {'numbers':>8} {'read exactly':>13} "
          f"{'digit count right':>18} {'digit accuracy':>15}")
    for source in ("fonts", "MNIST"):
        totals = [0] * 5
        for length in LENGTHS:
            row = tally.get((source, length))
            if row is None:
                continue
            totals = [t + v for t, v in zip(totals, row)]
            print(_line(source, str(length), row))
        if totals[0]:
            print(_line(source, "all", totals))
    for reason, count in sorted(refused.items()):
        print(f"refused: {reason}: {count}")
    return 0


def _line(source: str, length: str, row: list[int]) -> str:
    n, exact, count_right, digits_right, digits = row
    accuracy = f"{100 * digits_right / digits:.1f}%" if digits else "-"
    return (f"{source:<7} {length:>6} {n:>8} {100 * exact / n:>12.1f}% "
            f"{100 * count_right / n:>17.1f}% {accuracy:>15}")


if __name__ == "__main__":
    sys.exit(main())
