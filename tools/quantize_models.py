"""Int8 variants of CenterFace, the dlib gender network and (in part) the
emotion mini-Xception (`precision: int8`).

Static quantisation with ONNX Runtime's own quantiser: QDQ format,
activations uint8 (asymmetric), weights int8 per output channel (symmetric),
MinMax calibration; Softmax stays float. Of the emotion mini-Xception only
the last two residual blocks and the classifier (EMOTION_INT8_NODES) are
quantised, the rest stays float: all ops int8 ran at 0.8x fp32 in ONNX
Runtime 1.31.1 (its 60 x 60 stem convs with 1 and 8 channels lose most),
this partial variant at 1.03x to 1.09x. Other quantiser options tried on
CenterFace (first conv or heads left float, per-tensor weights, QOperator,
symmetric activations, uint8 weights, ConvTranspose as Conv + DepthToSpace)
were not clearly faster or lost accuracy: models/README.md, "Options tried".
The gender network's 2 x 2 average pools are first rewritten as the
equivalent depthwise convolutions (weights 1/4, exact in int8 per channel):
ONNX Runtime's QLinearAveragePool took 30 % of the int8 network's time, the
int8 depthwise convolution a small part of it (gender, batch of 5, 1 thread:
1.24 -> 0.87 ms).
Excluding a Conv that sits between a DequantizeLinear and a QuantizeLinear
does not keep it float (ONNX Runtime quantises its weights itself, per
tensor, when it loads the model), hence one int8 tail for emotion rather than
int8 with float holes.
The int8 emotion file then has its stem's 8-channel activation (after
conv2d_2) widened to 16 channels by zero filters (`widen_to_block`): ONNX
Runtime's NCHWc convolutions work on blocks of 16 channels on AVX-512 and
take an 8-channel input through a slower path with reorders to and from
plain NCHW; with 16 channels, 8 of them always zero, the same numbers come
out (max difference 0 on random chips) in less time (1 thread, batch of 5:
1.36 -> 1.27 ms).

Calibration data are the benchmark frames made by benches/make_bench_frames.py
(tests/fixtures/core/frame_*.jpg, tiled from the test photos) and their mirror
images; the single test photos are left for checking (tests/core_int8.rs):
* CenterFace: every frame at 320x256 (the default `detection_max_side`) and at
  its own network size (sides rounded up to multiples of 32). Both are needed:
  calibrated at 320x256 only, the `scale` head's range is too small for large
  faces and boxes collapse at full resolution.
* gender: the aligned 32 px chips (tools/chip_alignment.py) of the faces fp32
  CenterFace finds in those frames.
* emotion: the 64 px grey chips of the same faces (square around the box grown
  by the manifest's crop_padding 0.1 on each side, axis-aligned, supersampled
  x4 and box-averaged).

CenterFace is first converted from opset 9 to 13 (per-channel QDQ needs
opset >= 13); all three go through ONNX Runtime's `quant_pre_process`
(batch norm folded into the convolutions, shapes inferred). The input keeps
its dynamic N x 3 x H x W shape. The output depends on the onnxruntime and
onnx versions, so other versions are refused.

Run: `python tools/quantize_models.py MODELS_DIR FRAMES_DIR OUT_DIR`: reads
centerface.onnx, gender-v1.onnx and emotion_mini_xception.onnx from
MODELS_DIR, writes centerface.int8.onnx, gender-v1.int8.onnx and
emotion_mini_xception.int8.onnx into OUT_DIR
(tools/regenerate_models.sh passes freshly rebuilt models and frames).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

import centerface_decode
from chip_alignment import FIXTURES, chip

PINNED = {"onnxruntime": "1.31.1", "onnx": "1.23.2"}
QDQ_MIN_OPSET = 13
# Width, height: detection_max_side 320 on 4:3 and 16:9 frames.
CALIBRATION_SIZE = (320, 256)
GENDER_MEAN = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)
GENDER_SCALE = 1.0 / 256.0
GENDER_CHIP_SIZE = 32
EMOTION_PADDING = 0.1
EMOTION_CHIP_SIZE = 64
EMOTION_SUPERSAMPLING = 4
# The emotion nodes quantised: the last two residual blocks (separable convs
# 5 to 8 with the ReLU between each pair, the shortcut convs conv2d_5 and
# conv2d_6, their pools and adds), the classifier conv and the global average
# pool. Quantising earlier blocks, the stem in particular, made it slower
# (models/README.md).
EMOTION_INT8_NODES = [
    # block 3
    "separable_conv2d_5/depthwise", "separable_conv2d_5", "activation_5",
    "separable_conv2d_6/depthwise", "separable_conv2d_6",
    "conv2d_5", "max_pooling2d_3", "add_3",
    # block 4
    "separable_conv2d_7/depthwise", "separable_conv2d_7", "activation_6",
    "separable_conv2d_8/depthwise", "separable_conv2d_8",
    "conv2d_6", "max_pooling2d_4", "add_4",
    # classifier
    "conv2d_7", "global_average_pooling2d_1",
]
# Emotion nodes that produce or read the stem's 8-channel activation
# `activation_2`, widened to 16 channels after quantising: (node, axis of its
# weights to pad: 0 for outputs, 1 for inputs).
EMOTION_WIDENED = [
    ("conv2d_2", 0),
    ("separable_conv2d_1/depthwise", 0),
    ("separable_conv2d_1", 1),
    ("conv2d_3", 1),
]
# ONNX Runtime's NCHWc block on AVX-512: the channel count the widened tensors get.
NCHWC_BLOCK = 16
# (source file, output file, input name, nodes to quantise: None for all but
# Softmax, average pools rewritten as depthwise convolutions first, float
# convs widened afterwards)
CENTERFACE = ("centerface.onnx", "centerface.int8.onnx", "input", None, False, None)
GENDER = ("gender-v1.onnx", "gender-v1.int8.onnx", "images", None, True, None)
EMOTION = ("emotion_mini_xception.onnx", "emotion_mini_xception.int8.onnx", "input",
           tuple(EMOTION_INT8_NODES), False, tuple(EMOTION_WIDENED))


def check_versions() -> None:
    found = {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
    if found != PINNED:
        raise SystemExit(f"need {PINNED}, found {found}")


def calibration_frames(frames_dir: Path) -> list[np.ndarray]:
    """The benchmark frames and their mirror images, in a fixed order."""
    paths = sorted(frames_dir.glob("frame_*.jpg"))
    if not paths:
        raise SystemExit(f"no frame_*.jpg in {frames_dir}: run benches/make_bench_frames.py")
    frames = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        frames += [image, np.ascontiguousarray(image[:, ::-1])]
    return frames


def detector_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[1, 3, H, W] raw RGB floats, the image resized to `size` (width, height)."""
    h, w = image.shape[:2]
    resized = image if size == (w, h) else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return np.ascontiguousarray(resized.astype(np.float32).transpose(2, 0, 1)[None])


def detector_inputs(frames: list[np.ndarray]) -> list[np.ndarray]:
    inputs = []
    for frame in frames:
        own_size = centerface_decode.network_size(frame.shape[1], frame.shape[0])
        inputs += [detector_input(frame, CALIBRATION_SIZE), detector_input(frame, own_size)]
    return inputs


def gender_inputs(frames: list[np.ndarray], detector: ort.InferenceSession) -> list[np.ndarray]:
    """[1, 3, 32, 32] normalised aligned chips of every face fp32 CenterFace finds."""
    template = np.array(json.loads((FIXTURES / "chip_alignment.json").read_text())
                        ["centerface_template_unit_square"])
    inputs = []
    for frame in frames:
        for face in centerface_decode.detect_image(detector, frame):
            pixels = chip(frame, np.asarray(face.landmarks), template, GENDER_CHIP_SIZE)
            normalised = (pixels - GENDER_MEAN) * GENDER_SCALE
            inputs.append(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32))
    return inputs


def emotion_inputs(frames: list[np.ndarray], detector: ort.InferenceSession) -> list[np.ndarray]:
    """[1, 1, 64, 64] normalised grey chips of every face fp32 CenterFace finds."""
    inputs = []
    big = EMOTION_CHIP_SIZE * EMOTION_SUPERSAMPLING
    for frame in frames:
        grey = Image.fromarray(frame).convert("L")
        for face in centerface_decode.detect_image(detector, frame):
            cx, cy = (face.x1 + face.x2) / 2, (face.y1 + face.y2) / 2
            half = max(face.x2 - face.x1, face.y2 - face.y1) * (0.5 + EMOTION_PADDING)
            region = grey.transform((big, big), Image.EXTENT, (cx - half, cy - half, cx + half, cy + half),
                                    Image.BILINEAR)
            pixels = np.asarray(region.reduce(EMOTION_SUPERSAMPLING), dtype=np.float32)
            inputs.append(((pixels - 127.5) / 127.5)[None, None])
    return inputs


class Inputs(CalibrationDataReader):
    """Calibration reader over a fixed list of inputs of one graph input."""

    def __init__(self, name: str, inputs: list[np.ndarray]):
        self.name, self.inputs, self.next_index = name, inputs, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.next_index == len(self.inputs):
            return None
        self.next_index += 1
        return {self.name: self.inputs[self.next_index - 1]}

    def rewind(self) -> None:
        self.next_index = 0


def pools_as_depthwise_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every unpadded 2-D AveragePool as the depthwise Conv computing the same
    means (one weight 1 / window area per channel, no bias); shapes inferred."""
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value
                for v in list(graph.value_info) + list(graph.input)
                if len(v.type.tensor_type.shape.dim) == 4}
    nodes = []
    for node in graph.node:
        if node.op_type != "AveragePool":
            nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != 2 or any(attrs.get("pads", [])) or attrs.get("ceil_mode", 0) \
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise SystemExit(f"{node.name}: only unpadded 2-D average pools are rewritten")
        c = channels.get(node.input[0], 0)
        if c <= 0:
            raise SystemExit(f"{node.name}: unknown channel count")
        weights = onnx.numpy_helper.from_array(
            np.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=np.float32),
            f"{node.name}_depthwise_weights")
        graph.initializer.append(weights)
        nodes.append(onnx.helper.make_node(
            "Conv", [node.input[0], weights.name], list(node.output), name=node.name,
            group=c, kernel_shape=kernel, strides=list(attrs.get("strides", [1, 1]))))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def widen_to_block(model: onnx.ModelProto, convs: list[tuple[str, int]],
                   width: int) -> onnx.ModelProto:
    """Zero-pads float Conv weights to `width` channels: axis 0 pads a
    conv's filters (and its bias; a depthwise conv's group grows with them),
    axis 1 a conv's inputs. Padded filters give zeros and padded inputs are
    read with zero weights, so the outputs do not change."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}

    def padded(name: str, axis: int) -> int:
        if name not in initializers:
            raise SystemExit(f"{name}: not a float initializer")
        array = onnx.numpy_helper.to_array(initializers[name])
        if array.dtype != np.float32 or array.shape[axis] > width:
            raise SystemExit(f"{name}: {array.dtype} {array.shape} cannot widen to {width}")
        pad = [(0, 0)] * array.ndim
        pad[axis] = (0, width - array.shape[axis])
        initializers[name].CopyFrom(onnx.numpy_helper.from_array(np.pad(array, pad), name))
        return array.shape[axis]

    for conv_name, axis in convs:
        conv = by_name.get(conv_name)
        if conv is None or conv.op_type != "Conv":
            raise SystemExit(f"no float Conv {conv_name}")
        channels = padded(conv.input[1], axis)
        groups = [a for a in conv.attribute if a.name == "group" and a.i != 1]
        if groups and (axis != 0 or groups[0].i != channels):
            raise SystemExit(f"{conv_name}: only plain and depthwise convs are widened")
        if axis == 0:
            if len(conv.input) > 2 and conv.input[2]:
                padded(conv.input[2], 0)
            for group in groups:
                group.i = width
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def quantise(src: Path, dst: Path, input_name: str, inputs: list[np.ndarray], work: Path,
             nodes: tuple[str, ...] | None, pools_as_convs: bool,
             widened: list[tuple[str, int]] | None) -> None:
    model = onnx.load(src)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < QDQ_MIN_OPSET:
        model = version_converter.convert_version(model, QDQ_MIN_OPSET)
    upgraded, prepared = work / f"{src.stem}.opset.onnx", work / f"{src.stem}.pre.onnx"
    onnx.save(model, upgraded)
    quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
    if pools_as_convs:
        onnx.save(pools_as_depthwise_convs(onnx.load(prepared)), prepared)
    graph = onnx.load(prepared).graph
    softmax = [n.name for n in graph.node if n.op_type == "Softmax"]
    missing = sorted(set(nodes or ()) - {n.name for n in graph.node})
    if missing:
        raise SystemExit(f"{src.name}: no nodes {missing}")
    quantize_static(
        str(prepared), str(dst), Inputs(input_name, inputs),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=list(nodes) if nodes else None,
        nodes_to_exclude=softmax, calibrate_method=CalibrationMethod.MinMax,
    )
    if widened:
        onnx.save(widen_to_block(onnx.load(dst), widened, NCHWC_BLOCK), dst)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit("usage: quantize_models.py MODELS_DIR FRAMES_DIR OUT_DIR")
    models, frames_dir, out = (Path(a) for a in sys.argv[1:])
    check_versions()
    ort.set_default_logger_severity(3)
    out.mkdir(parents=True, exist_ok=True)
    frames = calibration_frames(frames_dir)
    detector = ort.InferenceSession(str(models / CENTERFACE[0]), providers=["CPUExecutionProvider"])
    calibration = {
        CENTERFACE: detector_inputs(frames),
        GENDER: gender_inputs(frames, detector),
        EMOTION: emotion_inputs(frames, detector),
    }
    with tempfile.TemporaryDirectory() as work:
        for (source, target, input_name, nodes, pools_as_convs, widened), inputs \
                in calibration.items():
            quantise(models / source, out / target, input_name, inputs, Path(work), nodes,
                     pools_as_convs, list(widened) if widened else None)
            print(f"{target}: calibrated on {len(inputs)} inputs")


if __name__ == "__main__":
    main()
