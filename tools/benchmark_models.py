"""Latency of each model under ONNX Runtime (Python API, CPU provider).

Classifiers at batch 1 and 5, the detector on one 640x480 frame (and 320x256), each with
1 and 2 intra-op threads (inter-op 1, default graph optimisations). Prints a
Markdown table: median and minimum over the timed runs, after warm-up.

Run: `tools/.venv/bin/python tools/benchmark_models.py [RUNS]`.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from sources import MODELS_DIR

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

WARMUP = 5
DETECTOR_FRAMES = ((480, 640), (256, 320))  # height, width: multiples of 32


def cases(entry: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(label, input shape) pairs to time for one model."""
    _, c, h, w = entry["input"]["shape"]
    if entry["task"] == "face_detection" and h > 0 and w > 0:  # fixed input (BlazeFace)
        return [(f"1 x {w}x{h}", (1, c, h, w))]
    if entry["task"] == "face_detection":
        return [(f"1 x {w}x{h}", (1, 3, h, w)) for h, w in DETECTOR_FRAMES]
    return [(f"batch {n}", (n, c, h, w)) for n in (1, 5)]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    rng = np.random.default_rng(0)
    print(f"ONNX Runtime {ort.__version__}, {platform.processor() or platform.machine()}, {runs} runs\n")
    print("| model | input | threads | median ms | min ms |")
    print("| --- | --- | --- | --- | --- |")
    for entry in manifest["model"]:
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(MODELS_DIR / entry["file"]), options,
                                           providers=["CPUExecutionProvider"])
            for label, shape in cases(entry):
                x = rng.uniform(-1, 1, shape).astype(np.float32)
                feed = {entry["input"]["name"]: x}
                for _ in range(WARMUP):
                    session.run(None, feed)
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    session.run(None, feed)
                    times.append((time.perf_counter() - start) * 1000)
                print(f"| {entry['name']} | {label} | {threads} | {statistics.median(times):.2f} | {min(times):.2f} |")


if __name__ == "__main__":
    main()
