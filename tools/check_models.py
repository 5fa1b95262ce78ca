"""Checks model files against the sha256s in models/manifest.toml.

Run: `python tools/check_models.py [DIR]` (default models/); exit status 1 on
any mismatch or missing file.

The int8 models come from a calibration that runs fp32 inference, whose last
bits may depend on the CPU's instruction set. When DIR is not models/ and an
int8 file's hash differs, the file is compared tensor by tensor with the
committed one instead: same graph, same tensor names, types and shapes,
quantised integers at most 1 step apart in at most 0.1% of elements, float
tensors (scales, biases) within a relative 1e-4. That passes as "near" and
is reported; anything further fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sources import MODELS_DIR, sha256_of

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib


MAX_STEP = 1
MAX_STEP_FRACTION = 1e-3
MAX_FLOAT_REL = 1e-4


def near_int8(built: Path, committed: Path) -> str | None:
    """None when `built` matches `committed` within the tolerances above,
    else the first difference found."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(built)), onnx.load(str(committed))
    if [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] != [
        (n.op_type, list(n.input), list(n.output)) for n in b.graph.node
    ]:
        return "graphs differ"
    tensors_b = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    for tensor in a.graph.initializer:
        x = numpy_helper.to_array(tensor)
        y = tensors_b.pop(tensor.name, None)
        if y is None or x.dtype != y.dtype or x.shape != y.shape:
            return f"tensor {tensor.name}: missing or of another type or shape"
        if np.issubdtype(x.dtype, np.integer):
            step = np.abs(x.astype(np.int64) - y.astype(np.int64))
            if step.max(initial=0) > MAX_STEP or (step > 0).mean() > MAX_STEP_FRACTION:
                return f"tensor {tensor.name}: integers differ by up to {step.max()}"
        else:
            scale = np.maximum(np.abs(y), np.finfo(np.float32).tiny)
            rel = float((np.abs(x.astype(np.float64) - y) / scale).max(initial=0.0))
            if rel > MAX_FLOAT_REL:
                return f"tensor {tensor.name}: relative difference {rel:.2e}"
    return f"tensors only in the committed file: {sorted(tensors_b)}" if tensors_b else None


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS_DIR
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    failures = 0
    for entry in manifest["model"]:
        path = directory / entry["file"]
        actual = sha256_of(path) if path.is_file() else "missing"
        ok = actual == entry["sha256"]
        status = "ok  " if ok else "FAIL"
        committed = MODELS_DIR / entry["file"]
        if (
            not ok
            and actual != "missing"
            and entry["name"].endswith("_int8")
            and directory.resolve() != MODELS_DIR.resolve()
            and committed.is_file()
        ):
            difference = near_int8(path, committed)
            ok = difference is None
            status = "near" if ok else "FAIL"
            if difference:
                print(f"     {entry['name']}: {difference}")
        failures += not ok
        print(f"{status} {entry['name']:<30} {entry['file']:<28} {actual}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
