"""The page's vendored libraries: the files on disk are the ones recorded, and a tarball that does
not match the registry's integrity is refused before anything is read from it. No network here."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.vendor import (
    PACKAGES,
    REGISTRY,
    VENDOR,
    IntegrityError,
    Package,
    VendorError,
    check,
    download,
    metadata_url,
    verify_integrity,
    write,
)

TINY = Package("tiny", "1.0.0", "tiny", ("lib/tiny.esm.js",), ("LICENSE",))
TARBALL = f"{REGISTRY}/tiny/-/tiny-1.0.0.tgz"


def npm_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            member = tarfile.TarInfo(f"package/{path}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def registry(tarball: bytes, integrity: str) -> Callable[[str], bytes]:
    """A fake registry for TINY: it answers the two URLs a download asks for, and no other."""
    metadata = {"name": "tiny", "version": "1.0.0", "dist": {"tarball": TARBALL, "integrity": integrity}}
    answers = {metadata_url(TINY): json.dumps(metadata).encode(), TARBALL: tarball}
    return answers.__getitem__


GOOD = {"lib/tiny.esm.js": b"export default 1;\n", "LICENSE": b"MIT\n", "README.md": b"tiny\n"}


def test_the_vendored_files_match_their_recorded_checksums() -> None:
    assert check() == []


def test_every_package_has_its_licence_beside_its_files() -> None:
    recorded = {
        entry["name"]: entry for entry in json.loads((VENDOR / "versions.json").read_text())["packages"]
    }
    assert set(recorded) == {package.name for package in PACKAGES}
    for package in PACKAGES:
        entry = recorded[package.name]
        assert entry["version"] == package.version and entry["licences"], package.name
        for licence in entry["licences"]:
            assert licence in entry["files"], licence
            assert (VENDOR / licence).stat().st_size > 0, licence


def test_the_check_from_the_command_line_passes() -> None:
    script = Path(__file__).resolve().parents[1] / "tools" / "vendor.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("change", ["edited", "deleted", "added"])
def test_the_check_names_a_file_that_differs_from_the_record(tmp_path: Path, change: str) -> None:
    vendor = tmp_path / "vendor"
    shutil.copytree(VENDOR, vendor)
    target = vendor / "marked" / ("stray.js" if change == "added" else "marked.esm.js")
    if change == "edited":
        target.write_bytes(target.read_bytes() + b"\n")
    elif change == "deleted":
        target.unlink()
    else:
        target.write_bytes(b"alert(1)\n")
    problems = check(vendor)
    assert len(problems) == 1 and problems[0].startswith(f"{target}: "), problems


def test_the_check_names_a_pin_the_record_does_not_have(tmp_path: Path) -> None:
    bumped = [
        Package(p.name, "99.0.0", p.directory, p.files, p.licences) if p.name == "marked" else p
        for p in PACKAGES
    ]
    problems = check(VENDOR, bumped)
    assert len(problems) == 1 and "marked is 18" in problems[0] and "pinned 99.0.0" in problems[0], problems


def test_a_verified_tarball_gives_the_pinned_files_and_their_record(tmp_path: Path) -> None:
    tarball = npm_tarball(GOOD)
    vendored = download(TINY, registry(tarball, sri(tarball)))
    assert vendored.contents == {"tiny/tiny.esm.js": b"export default 1;\n", "tiny/LICENSE": b"MIT\n"}
    write(tmp_path, [vendored])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "tiny/LICENSE",
        "tiny/tiny.esm.js",
        "versions.json",
    ]
    assert check(tmp_path, [TINY]) == []
    (tmp_path / "tiny" / "LICENSE").write_bytes(b"GPL\n")
    assert check(tmp_path, [TINY]) == [f"{tmp_path / 'tiny' / 'LICENSE'}: sha256 differs from versions.json"]


@pytest.mark.parametrize(
    "tampered",
    [
        npm_tarball({**GOOD, "lib/tiny.esm.js": b"fetch('//evil.example');\n"}),
        b"not a tarball: refused for its digest before anything reads it",
    ],
    ids=["changed-file", "not-gzip"],
)
def test_a_tampered_tarball_is_refused(tmp_path: Path, tampered: bytes) -> None:
    published = npm_tarball(GOOD)
    (tmp_path / "tiny.tgz").write_bytes(tampered)
    with pytest.raises(IntegrityError) as caught:
        download(TINY, registry((tmp_path / "tiny.tgz").read_bytes(), sri(published)))
    assert caught.value.url == TARBALL and caught.value.expected == sri(published)
    assert caught.value.actual == sri(tampered)


@pytest.mark.parametrize(
    "integrity",
    [
        "sha1-" + base64.b64encode(hashlib.sha1(b"x").digest()).decode(),  # no sha512 to check against
        "",
        "sha512-" + base64.b64encode(b"\0" * 64).decode(),
    ],
)
def test_integrity_without_a_matching_sha512_is_refused(integrity: str) -> None:
    with pytest.raises(VendorError):
        verify_integrity(TARBALL, b"x", integrity)


def test_a_matching_sha512_among_several_hashes_is_accepted() -> None:
    verify_integrity(TARBALL, b"x", f"sha1-AAAA {sri(b'x')}")


def test_a_pinned_file_missing_from_the_tarball_is_refused() -> None:
    tarball = npm_tarball({"LICENSE": b"MIT\n"})
    with pytest.raises(VendorError, match="lib/tiny.esm.js"):
        download(TINY, registry(tarball, sri(tarball)))


def test_a_tarball_from_elsewhere_than_the_registry_is_refused() -> None:
    tarball = npm_tarball(GOOD)
    dist = {"tarball": "https://cdn.example/tiny-1.0.0.tgz", "integrity": sri(tarball)}
    metadata = {"name": "tiny", "version": "1.0.0", "dist": dist}
    answers = {metadata_url(TINY): json.dumps(metadata).encode()}
    with pytest.raises(VendorError, match="elsewhere"):
        download(TINY, answers.__getitem__)
