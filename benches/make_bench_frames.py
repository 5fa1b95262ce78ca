"""Composite benchmark frames tiled from the real test photos.

Writes tests/fixtures/core/frame_{640x480,1920x1080}_{1,2,5}faces.jpg from
tests/fixtures/models/photos (public domain / CC0, see their LICENCES.md):
1 face: the astronaut, letterboxed; 2 faces: astronaut and Grace Hopper side
by side; 5 faces: a 3 x 2 grid of astronaut, Grace Hopper, both mirrored and a
closer crop of the astronaut (the sixth cell is left grey; the cameraman is not
used: half hidden by his camera, he is not reliably found at small sizes).
Needs numpy and Pillow.
Run: python3 benches/make_bench_frames.py [OUT_DIR] (default
tests/fixtures/core; tools/regenerate_models.sh writes them elsewhere to
calibrate the int8 models).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "fixtures" / "models" / "photos"
BACKGROUND = (118, 118, 118)
SIZES = [(640, 480), (1920, 1080)]
JPEG_QUALITY = 92
# Head and shoulders of the astronaut (left, top, right, bottom).
ASTRONAUT_HEAD = (110, 10, 350, 290)


def fit(photo: Image.Image, width: int, height: int) -> Image.Image:
    """The photo scaled to fit width x height, centred on grey."""
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    scaled = ImageOps.contain(photo, (width, height), Image.LANCZOS)
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def grid(cells: list, columns: int, rows: int, width: int, height: int) -> Image.Image:
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    cw, ch = width // columns, height // rows
    for i, photo in enumerate(cells):
        canvas.paste(fit(photo, cw, ch), ((i % columns) * cw, (i // columns) * ch))
    return canvas


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "core"
    out.mkdir(parents=True, exist_ok=True)
    load = lambda name: Image.open(PHOTOS / name).convert("RGB")
    astronaut, hopper = load("astronaut.jpg"), load("grace_hopper.jpg")
    closer = astronaut.crop(ASTRONAUT_HEAD)
    five = [astronaut, hopper, ImageOps.mirror(astronaut), ImageOps.mirror(hopper), closer]
    for width, height in SIZES:
        frames = {
            1: fit(astronaut, width, height),
            2: grid([astronaut, hopper], 2, 1, width, height),
            5: grid(five, 3, 2, width, height),
        }
        for faces, image in frames.items():
            path = out / f"frame_{width}x{height}_{faces}faces.jpg"
            image.save(path, quality=JPEG_QUALITY)
            print(path, np.asarray(image).shape)


if __name__ == "__main__":
    main()
