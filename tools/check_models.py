"""Checks model files against the sha256s in models/manifest.toml.

Run: `python tools/check_models.py [DIR]` (default models/); exit status 1 on
any mismatch or missing file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sources import MODELS_DIR, sha256_of

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS_DIR
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    failures = 0
    for entry in manifest["model"]:
        path = directory / entry["file"]
        actual = sha256_of(path) if path.is_file() else "missing"
        ok = actual == entry["sha256"]
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {entry['name']:<30} {entry['file']:<28} {actual}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
