"""Reference decoding of the BlazeFace detectors (models/README.md documents it).

The frame is letterboxed into the square network input: scaled by
`S / max(w, h)` to `round(w * f) x round(h * f)`, placed at offset
`((S - rw) // 2, (S - rh) // 2)` on black, normalised to [-1, 1]. Outputs are
decoded against MediaPipe's SSD anchors (anchor centres only: every anchor has
size 1, `fixed_anchor_size`), scores are the sigmoid of the logits, boxes
above the threshold are mapped back to the frame and merged by weighted NMS
(MediaPipe's rule for its face detector, see `weighted_nms`).

Also a command: `python tools/blazeface_decode.py [--variant V] [--model FILE]
[--threshold T] [--nms weighted|hard] PHOTO...` prints the faces of each
photo (JSON lines), run with ONNX Runtime on the converted model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sources import MODELS_DIR


@dataclass(frozen=True)
class AnchorSpec:
    """MediaPipe's SsdAnchorsCalculator options for one model (the subset BlazeFace uses)."""

    input_size: int
    # One entry per layer; consecutive layers of one stride share a grid.
    strides: tuple[int, ...]
    # 1.0 adds a second anchor per layer (the interpolated scale); 0.0 does not.
    interpolated_scale_aspect_ratio: float
    offset: float = 0.5


ANCHORS = {
    "full_range": AnchorSpec(192, (4,), 0.0),
    "back": AnchorSpec(256, (16, 32, 32, 32), 1.0),
    "short_range": AnchorSpec(128, (8, 16, 16, 16), 1.0),
}
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear_tragion", "left_ear_tragion")
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.3
# MediaPipe clips logits to +-100 before the sigmoid; float32 needs less.
LOGIT_LIMIT = 80.0


def anchor_centres(spec: AnchorSpec) -> np.ndarray:
    """Anchor centres (x, y) in input pixels, in the network's output order:
    per stride group, row-major cells, all anchors of a cell together."""
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        per_cell = 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            per_cell += 2 if spec.interpolated_scale_aspect_ratio == 1.0 else 1
            layer += 1
        cells = math.ceil(spec.input_size / stride)
        for y in range(cells):
            for x in range(cells):
                centre = ((x + spec.offset) / cells * spec.input_size, (y + spec.offset) / cells * spec.input_size)
                centres.extend([centre] * per_cell)
    return np.array(centres, dtype=np.float32)


@dataclass(frozen=True)
class Letterbox:
    """Where the frame sits in the network input."""

    size: int
    width: int  # scaled frame width
    height: int
    left: int
    top: int
    scale_x: float  # scaled / frame
    scale_y: float

    @staticmethod
    def for_frame(frame_w: int, frame_h: int, size: int) -> "Letterbox":
        factor = size / max(frame_w, frame_h)
        w = max(1, round(frame_w * factor))
        h = max(1, round(frame_h * factor))
        return Letterbox(size, w, h, (size - w) // 2, (size - h) // 2, w / frame_w, h / frame_h)

    def to_frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.left) / self.scale_x, (y - self.top) / self.scale_y


def network_input(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The [1, 3, S, S] input (values in [-1, 1]) and its letterbox."""
    box = Letterbox.for_frame(rgb.shape[1], rgb.shape[0], size)
    canvas = np.zeros((size, size, 3), np.uint8)
    scaled = np.asarray(Image.fromarray(rgb).resize((box.width, box.height), Image.BILINEAR))
    canvas[box.top : box.top + box.height, box.left : box.left + box.width] = scaled
    tensor = (canvas.astype(np.float32) - 127.5) / 127.5
    return tensor.transpose(2, 0, 1)[None], box


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def hard_nms(candidates: list[dict], nms_iou: float) -> list[dict]:
    """Greedy NMS: best score first, a candidate overlapping a kept one by
    IoU > nms_iou is dropped (the other backends' rule)."""
    ordered = sorted(candidates, key=lambda d: -d["score"])
    kept: list[dict] = []
    for d in ordered:
        if all(iou(d["box"], k["box"]) <= nms_iou for k in kept):
            kept.append(d)
    return kept


def weighted_nms(candidates: list[dict], nms_iou: float) -> list[dict]:
    """Weighted (blending) NMS. Candidates are taken in order of decreasing
    score; the best remaining one and every remaining candidate whose IoU
    with it exceeds nms_iou form a cluster, which is replaced by one face:
    box and keypoints are the score-weighted means over the cluster, the
    score is the best one's. The cluster is removed and the rest repeated.
    The faces are those greedy NMS keeps (same count, same scores), only
    their boxes and keypoints move."""
    remaining = sorted(candidates, key=lambda d: -d["score"])
    merged: list[dict] = []
    while remaining:
        top = remaining[0]
        overlap = np.array([iou(top["box"], d["box"]) > nms_iou for d in remaining])
        overlap[0] = True
        cluster = [d for d, o in zip(remaining, overlap) if o]
        remaining = [d for d, o in zip(remaining, overlap) if not o]
        weights = np.array([d["score"] for d in cluster], dtype=np.float64)
        weights /= weights.sum()
        merged.append(
            {
                "box": np.tensordot(weights, np.stack([d["box"] for d in cluster]), axes=1),
                "score": top["score"],
                "keypoints": np.tensordot(weights, np.stack([d["keypoints"] for d in cluster]), axes=1),
                "cluster": len(cluster),
            }
        )
    return merged


NMS = {"weighted": weighted_nms, "hard": hard_nms}


def decode(
    regressors: np.ndarray,
    logits: np.ndarray,
    variant: str,
    box: Letterbox,
    threshold: float = SCORE_THRESHOLD,
    nms_iou: float = NMS_IOU,
    nms: str = "weighted",
) -> list[dict]:
    """Faces of one image: regressors [A, 16], logits [A, 1] -> boxes in frame
    pixels (not clipped), best score first, merged by `nms` ("weighted", the
    shipped rule, or "hard")."""
    centres = anchor_centres(ANCHORS[variant])
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -LOGIT_LIMIT, LOGIT_LIMIT)))
    candidates = []
    for i in np.flatnonzero(scores > threshold):
        r = regressors[i]
        cx, cy = centres[i, 0] + r[0], centres[i, 1] + r[1]
        w, h = r[2], r[3]
        if w <= 0 or h <= 0:
            continue
        xs = np.array([cx - w / 2, cx + w / 2] + [centres[i, 0] + r[4 + 2 * k] for k in range(6)])
        ys = np.array([cy - h / 2, cy + h / 2] + [centres[i, 1] + r[5 + 2 * k] for k in range(6)])
        fx, fy = box.to_frame(xs, ys)
        candidates.append(
            {
                "box": np.array([fx[0], fy[0], fx[1], fy[1]]),
                "score": float(scores[i]),
                "keypoints": np.stack([fx[2:], fy[2:]], axis=1),
            }
        )
    return NMS[nms](candidates, nms_iou)


def as_json(face: dict) -> dict:
    return {
        "box": [round(float(v), 2) for v in face["box"]],
        "score": round(face["score"], 4),
        "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in face["keypoints"]],
    }


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(ANCHORS), default="full_range")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threshold", type=float, default=SCORE_THRESHOLD)
    parser.add_argument("--nms", choices=sorted(NMS), default="weighted")
    parser.add_argument("photos", nargs="+", type=Path)
    args = parser.parse_args()
    model = args.model or MODELS_DIR / f"blazeface_{args.variant}.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    size = ANCHORS[args.variant].input_size
    for photo in args.photos:
        rgb = np.asarray(Image.open(photo).convert("RGB"))
        tensor, box = network_input(rgb, size)
        regressors, logits = session.run(["regressors", "classificators"], {"input": tensor})
        faces = decode(regressors[0], logits[0], args.variant, box, args.threshold, nms=args.nms)
        print(json.dumps({"file": str(photo), "width": rgb.shape[1], "height": rgb.shape[0],
                          "faces": [as_json(f) for f in faces]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
