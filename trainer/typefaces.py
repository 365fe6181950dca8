"""Letters, symbols and digits set in the machine's fonts: typed text, digit or not.

The stroke tables (trainer.glyphs) draw letters the way a pen does, and type only in outline
(serifs and thick and thin strokes added to a pen's path). Typed text reaches the service
too: a screenshot, a photographed label or keyboard. ``typed`` renders letters and symbols
("not a digit") and ``typed_digits`` the digits from TrueType fonts with Pillow, a little
bolder or lighter and turned, and frames each as the server frames an upload's ink
(``models.framing``), as the other generated pictures are. The digits keep type's look from
meaning "not a digit".

Which fonts: ``FONT_DIRS`` by default, DejaVu and Liberation as Debian installs them (the
``fonts-dejavu-core``, ``fonts-dejavu-extra`` and ``fonts-liberation`` packages). GNU FreeFont
is left out on purpose: it is the benchmark's held-out face (bench.corpora), the measure of
faces the model never saw. A machine without them trains without typed letters and digits
(trainer.run says so and records it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import framing
from models.framing import SIDE

#: Where ``typed`` looks for fonts by default (``*.ttf`` directly in each).
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"),
             Path("/usr/share/fonts/truetype/liberation"))
#: Letters that no reader takes for a digit, as in trainer.glyphs: O o l I S Z B g q b (and s
#: z i j, which lose their dot or look like a digit's stroke) are neither digits nor not.
LETTERS = "ACDEFGHJKLMNPQRTUVWXYacdefhkmnprtuvwxy"
#: Symbols a keyboard or a text has; none a reader takes for a digit (| / ! ( ) are strokes
#: of digits, [ ] { } ¡ a 1 with a flag or a foot, ° a 0, and - . , : ; too small to frame).
SYMBOLS = "+=#@%&*<>?^~$€£¥§¶©®πΣΔΩλµ√∞≠±÷×‡«»¿"
#: Size of the rendering, in pixels of the font's em: the framing shrinks it to 20 px.
EM = 72
#: Rotation (degrees either way) of the typed text, as photographed or scanned askew.
ROTATION = 12
#: Draws of a font for one character before giving up (none draws it large enough).
MAX_TRIES = 1000


def font_files(dirs=None) -> list[Path]:
    """The TrueType files directly in ``dirs`` (default ``FONT_DIRS``; missing directories
    are skipped), sorted."""
    return sorted(p for d in map(Path, FONT_DIRS if dirs is None else dirs) if d.is_dir()
                  for p in d.glob("*.ttf"))


def _missing_box(font) -> bytes:
    """What ``font`` draws for a character it does not have (a box, or nothing)."""
    return np.asarray(font.getmask("\uFFFF")).tobytes()


def has_glyph(font, char: str, missing: bytes | None = None) -> bool:
    """Whether ``font`` (a Pillow FreeType font) draws ``char`` as itself; ``missing``: its
    ``_missing_box``, when the caller has it already."""
    return np.asarray(font.getmask(char)).tobytes() != (
        _missing_box(font) if missing is None else missing)


def _glyph(char: str, font, rng: np.random.Generator) -> np.ndarray | None:
    """``char`` in ``font`` as coverage in [0, 1], thinned or thickened a little, turned;
    None when the font has no such glyph (an empty drawing or the font's "missing" box)."""
    from PIL import Image, ImageDraw, ImageFilter  # only the trainer's fonts need Pillow

    left, top, right, bottom = font.getbbox(char)
    if right - left < 2 or bottom - top < 2:
        return None
    pad = EM // 4
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), char, fill=255, font=font)
    weight = rng.random()
    if weight < 0.2:
        image = image.filter(ImageFilter.MaxFilter(3 if weight < 0.1 else 5))
    elif weight < 0.35:
        image = image.filter(ImageFilter.MinFilter(3))
    image = image.rotate(float(rng.uniform(-ROTATION, ROTATION)), Image.Resampling.BILINEAR,
                         expand=True)
    ink = np.asarray(image, dtype=np.float32) / 255
    return ink if np.count_nonzero(ink > 0.5) >= 8 else None


def _faces(fonts: list[Path]) -> list[tuple]:
    """(Pillow's FreeType font at the rendering size, its ``_missing_box``) of each of
    ``fonts``."""
    from PIL import ImageFont

    faces = [ImageFont.truetype(str(f), EM) for f in fonts]
    return [(face, _missing_box(face)) for face in faces]


def _set(chars, rng: np.random.Generator, faces: list[tuple]) -> np.ndarray:
    """(len(chars), 28, 28) float32: each of ``chars`` set in a random one of ``faces``
    (``_faces``) that has it (another when the font lacks it), framed as the server frames an
    upload. Every char must be some face's own (``has_glyph``)."""
    out = np.empty((len(chars), SIDE, SIDE), dtype=np.float32)
    for i, char in enumerate(chars):
        for _ in range(MAX_TRIES):
            face, missing = faces[int(rng.integers(len(faces)))]
            if not has_glyph(face, char, missing):
                continue  # the font would draw its "missing" box
            ink = _glyph(char, face, rng)
            if ink is not None:
                break
        else:
            raise ValueError(f"no font draws {char!r} large enough to frame")
        out[i] = framing.frame(ink)
    return out


def typed(n: int, rng: np.random.Generator, fonts: list[Path]) -> np.ndarray:
    """(n, 28, 28) float32: letters and symbols (half each, at random) set in ``fonts``, of
    those some font has; no fonts (or none with any of them): (0, 28, 28)."""
    faces = _faces(fonts) if n else []
    pools = [p for p in ("".join(c for c in chars
                                 if any(has_glyph(f, c, m) for f, m in faces))
                         for chars in (LETTERS, SYMBOLS)) if p]
    if not pools:
        return np.zeros((0, SIDE, SIDE), dtype=np.float32)
    picked = [pools[0] if r < 0.5 else pools[-1] for r in rng.random(n)]
    return _set([p[int(rng.integers(len(p)))] for p in picked], rng, faces)


def typed_digits(n: int, rng: np.random.Generator, fonts: list[Path]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) float32, labels (n,) int64): the digits 0-9 in turn set in those
    of ``fonts`` that have all ten, as ``typed`` sets letters, so that type's look does not
    say "not a digit"; no such fonts: none."""
    faces = [(f, m) for f, m in (_faces(fonts) if n else [])
             if all(has_glyph(f, str(d), m) for d in range(10))]
    labels = np.arange(n if faces else 0, dtype=np.int64) % 10
    if not faces:
        return np.zeros((0, SIDE, SIDE), dtype=np.float32), labels
    return _set([str(d) for d in labels], rng, faces), labels
