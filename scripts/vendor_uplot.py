"""Refresh the vendored uPlot (the dashboard's charts) from the npm registry, checking it against the pins.

The dashboard has no build step: uPlot's IIFE build, its CSS and its licence are committed under
``server/deepgrad_server/static/vendor/uplot/``. This script downloads the pinned version's tarball from
https://registry.npmjs.org, checks it against the sha512 integrity pinned here (and against what the
registry's metadata says), and writes those three files. ``--check`` verifies the committed files against
their pinned sha256 without the network (the tests do the same).

    python scripts/vendor_uplot.py            # fetch, verify, write
    python scripts/vendor_uplot.py --check    # offline: are the committed files the pinned ones?

To move to another version: set VERSION, run with ``--integrity-from-registry`` to print the registry's
integrity and the new files' sha256, review uPlot's changes, paste the pins here, run again.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.6.32"
INTEGRITY = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
REGISTRY = "https://registry.npmjs.org/uplot"
DEST = Path(__file__).resolve().parents[1] / "server" / "deepgrad_server" / "static" / "vendor" / "uplot"
# tarball member -> vendored file, with the vendored file's sha256 (checked offline by --check and the tests)
FILES = {
    "package/dist/uPlot.iife.min.js": ("uPlot.iife.min.js",
                                       "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"),
    "package/dist/uPlot.min.css": ("uPlot.min.css", "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"),
    "package/LICENSE": ("LICENSE", "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd"),
}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def _sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(*, trust_registry: bool) -> dict[str, bytes]:
    """The pinned version's files, from a tarball whose sha512 matches the pin (or, with ``trust_registry``,
    the registry's metadata only: for moving to a new version)."""
    meta = json.loads(_get(f"{REGISTRY}/{VERSION}"))
    dist = meta["dist"]
    if meta.get("license") != "MIT":
        raise SystemExit(f"uplot {VERSION} is licensed {meta.get('license')!r}, not MIT: refusing")
    if not trust_registry and dist["integrity"] != INTEGRITY:
        raise SystemExit(f"the registry's integrity for uplot {VERSION} is {dist['integrity']}, not the pinned "
                         f"{INTEGRITY}: refusing")
    tarball = _get(dist["tarball"])
    if _sri(tarball) != dist["integrity"] or (not trust_registry and _sri(tarball) != INTEGRITY):
        raise SystemExit(f"uplot-{VERSION}.tgz does not match its integrity ({_sri(tarball)}): refusing")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return {member: tar.extractfile(member).read() for member in FILES}


def check() -> list[str]:
    """What differs between the committed files and the pins (empty: all as pinned)."""
    problems = []
    for name, digest in FILES.values():
        path = DEST / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} is not the pinned uPlot {VERSION} file (sha256 differs)")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="verify the committed files offline; write nothing")
    p.add_argument("--integrity-from-registry", action="store_true",
                   help="trust the registry's integrity for VERSION and print the pins to paste here")
    args = p.parse_args(argv)
    if args.check:
        problems = check()
        sys.stderr.write("".join(line + "\n" for line in problems))
        return 1 if problems else 0
    files = fetch(trust_registry=args.integrity_from_registry)
    DEST.mkdir(parents=True, exist_ok=True)
    for member, (name, digest) in FILES.items():
        sha = hashlib.sha256(files[member]).hexdigest()
        if args.integrity_from_registry:
            sys.stdout.write(f"{name}: sha256 {sha}\n")
        elif sha != digest:
            raise SystemExit(f"{member} of uplot {VERSION} has sha256 {sha}, not the pinned {digest}: refusing")
        (DEST / name).write_bytes(files[member])
    sys.stdout.write(f"uplot {VERSION} -> {DEST}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
