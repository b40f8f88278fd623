"""The page's browser libraries, fetched from the npm registry into static/vendor/.

`python tools/vendor.py` downloads every package pinned in `PACKAGES`, checks each tarball against
the registry's `dist.integrity` before reading anything from it, copies the chosen files and the
licences into `static/vendor/<directory>/`, and records name, version, tarball, integrity and the
sha256 of every file written in `static/vendor/versions.json`. `python tools/vendor.py --check`
uses no network: it checks the files on disk against that record, and the record against
`PACKAGES`, and names whatever differs.

Deliberate choices:
- The pins live here, not in a package.json: there is no npm install, no node_modules and no
  build step. The page imports these files as they come, as ES modules from relative URLs (its CSP
  allows scripts from 'self' only), so each ES module taken must have no import of its own; the
  ones pinned have none (checked with node's module parser when pinned). A version that gains one
  needs another file or an import map, not just a new pin.
- Everything is downloaded and verified before anything is written: a failed run leaves the old
  files and the old record as they were.
- Only sha512 integrity is accepted. The registry gives it for every version published since
  2017; the sha1 `shasum` beside it is not worth a fallback.
- Members are read from the archive by name (`extractfile`), never extracted, so no path in a
  tarball can write outside static/vendor/.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import posixpath
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "static" / "vendor"
LOCK = "versions.json"
REGISTRY = "https://registry.npmjs.org"
TIMEOUT_SECONDS = 60
RERUN = "run python tools/vendor.py"


@dataclass(frozen=True)
class Package:
    name: str  # on the registry
    version: str  # exact: no ranges
    directory: str  # under static/vendor/
    files: tuple[str, ...]  # paths inside the package, each written under its base name
    licences: tuple[str, ...]  # likewise


PACKAGES = (
    Package("marked", "18.2.1", "marked", ("lib/marked.esm.js",), ("LICENSE",)),
    # MPL-2.0 OR Apache-2.0: one file for each.
    Package("dompurify", "3.5.0", "dompurify", ("dist/purify.es.mjs",), ("LICENSE", "LICENSE-MPL")),
    Package(
        "@highlightjs/cdn-assets",
        "11.12.0",
        "highlightjs",
        ("es/highlight.min.js", "styles/github.min.css", "styles/github-dark.min.css"),
        ("LICENSE",),
    ),
    # Only the browser tests inject axe; its build bundles other projects' code under their licences.
    Package("axe-core", "4.14.1", "axe-core", ("axe.min.js",), ("LICENSE", "LICENSE-3RD-PARTY.txt")),
)


class VendorError(Exception):
    """A package could not be vendored as pinned; the message names the package."""


class IntegrityError(VendorError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"{url}: integrity {actual} does not match the registry's {expected}")
        self.url = url
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Vendored:
    package: Package
    tarball: str
    integrity: str
    contents: dict[str, bytes]  # path under static/vendor/ -> bytes
    sources: dict[str, str]  # path under static/vendor/ -> path inside the package


def destination(package: Package, path: str) -> str:
    return f"{package.directory}/{posixpath.basename(path)}"


def metadata_url(package: Package) -> str:
    return f"{REGISTRY}/{urllib.parse.quote(package.name, safe='@')}/{package.version}"


def fetch_url(url: str) -> bytes:
    headers = {"Accept": "application/json", "User-Agent": "sidechat-vendor"}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        data: bytes = response.read()
        return data


def verify_integrity(url: str, data: bytes, integrity: str) -> None:
    """Raise unless one of the SRI `sha512-<base64>` hashes in `integrity` is the digest of `data`."""
    expected = [token for token in integrity.split() if token.startswith("sha512-")]
    if not expected:
        raise VendorError(f"{url}: no sha512 integrity to check against (got {integrity!r})")
    actual = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    if actual not in expected:
        raise IntegrityError(url, integrity, actual)


def read_members(url: str, tarball: bytes, paths: Sequence[str]) -> dict[str, bytes]:
    """The files at `paths` inside the package; npm tarballs keep it under one top folder (`package/`)."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            _, _, path = member.name.partition("/")
            if path in paths and member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    found[path] = extracted.read()
    missing = [path for path in paths if path not in found]
    if missing:
        raise VendorError(f"{url}: no file {', '.join(missing)} in the tarball")
    return found


def download(package: Package, fetch: Callable[[str], bytes] = fetch_url) -> Vendored:
    url = metadata_url(package)
    metadata: Any = json.loads(fetch(url))
    if metadata.get("name") != package.name or metadata.get("version") != package.version:
        answered = f"{metadata.get('name')}@{metadata.get('version')}"
        raise VendorError(f"{url}: the registry answered for {answered}")
    dist = metadata.get("dist") or {}
    tarball, integrity = dist.get("tarball"), dist.get("integrity")
    if not isinstance(tarball, str) or not isinstance(integrity, str):
        raise VendorError(f"{url}: no dist.tarball or dist.integrity")
    if not tarball.startswith(REGISTRY + "/"):
        raise VendorError(f"{url}: the tarball is elsewhere than the registry: {tarball}")
    data = fetch(tarball)
    verify_integrity(tarball, data, integrity)
    wanted = package.files + package.licences
    members = read_members(tarball, data, wanted)
    return Vendored(
        package,
        tarball,
        integrity,
        contents={destination(package, path): members[path] for path in wanted},
        sources={destination(package, path): path for path in wanted},
    )


def lock_entry(vendored: Vendored) -> dict[str, object]:
    package = vendored.package
    return {
        "name": package.name,
        "version": package.version,
        "tarball": vendored.tarball,
        "integrity": vendored.integrity,
        "licences": [destination(package, path) for path in package.licences],
        "files": {
            path: {"from": vendored.sources[path], "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in vendored.contents.items()
        },
    }


def write(vendor_dir: Path, vendored: Sequence[Vendored]) -> None:
    """Replace the vendored directories (those pinned now and those recorded before) and the record."""
    directories = {v.package.directory for v in vendored}
    lock = vendor_dir / LOCK
    if lock.is_file():
        before = json.loads(lock.read_text())["packages"]
        directories |= {path.split("/")[0] for entry in before for path in entry["files"]}
    for directory in sorted(directories):
        target = vendor_dir / directory
        if target.resolve().parent != vendor_dir.resolve():
            raise VendorError(f"{LOCK} names a directory outside {vendor_dir}: {directory}")
        shutil.rmtree(target, ignore_errors=True)
    for v in vendored:
        for path, data in v.contents.items():
            (vendor_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (vendor_dir / path).write_bytes(data)
    record = {"packages": [lock_entry(v) for v in vendored]}
    lock.write_text(json.dumps(record, indent=2) + "\n")


def check(vendor_dir: Path = VENDOR, packages: Sequence[Package] = PACKAGES) -> list[str]:
    """What differs between the files on disk, the record and the pins: one line each, naming the file."""
    lock = vendor_dir / LOCK
    try:
        recorded: Any = json.loads(lock.read_text())["packages"]
        by_name = {entry["name"]: entry for entry in recorded}
        files = {path: file["sha256"] for entry in recorded for path, file in entry["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{lock}: unreadable ({exc!r}): {RERUN}"]
    problems: list[str] = []
    for path, sha256 in sorted(files.items()):
        on_disk = vendor_dir / path
        if not on_disk.is_file():
            problems.append(f"{on_disk}: missing")
        elif hashlib.sha256(on_disk.read_bytes()).hexdigest() != sha256:
            problems.append(f"{on_disk}: sha256 differs from {LOCK}")
    for on_disk in sorted(vendor_dir.rglob("*")):
        relative = on_disk.relative_to(vendor_dir).as_posix()
        if on_disk.is_file() and relative != LOCK and relative not in files:
            problems.append(f"{on_disk}: not recorded in {LOCK}")
    for package in packages:
        entry = by_name.get(package.name)
        if entry is None or entry.get("version") != package.version:
            found = "missing" if entry is None else entry.get("version")
            problems.append(f"{lock}: {package.name} is {found}, pinned {package.version}: {RERUN}")
            continue
        for path in map(partial(destination, package), package.files + package.licences):
            if path not in entry["files"]:
                problems.append(f"{vendor_dir / path}: pinned but not recorded in {LOCK}")
        for path in map(partial(destination, package), package.licences):
            if path not in entry.get("licences", []):
                problems.append(f"{vendor_dir / path}: not recorded as {package.name}'s licence")
    unpinned = sorted(set(by_name) - {package.name for package in packages})
    problems += [f"{lock}: records {name}, which tools/vendor.py does not pin" for name in unpinned]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="verify the files on disk, offline")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        vendored = [download(package) for package in PACKAGES]
    except (VendorError, OSError, ValueError) as exc:  # urllib's errors are OSErrors
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    VENDOR.mkdir(parents=True, exist_ok=True)
    write(VENDOR, vendored)
    for v in vendored:
        sizes = ", ".join(f"{path} ({len(data):,} bytes)" for path, data in v.contents.items())
        print(f"{v.package.name}@{v.package.version}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
