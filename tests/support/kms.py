"""Helpers of the kms and datastore tests: storage-failure injection, the AWS provider on a
loopback KMS server (the `kms_endpoint` fixture in tests/conftest.py starts it), key material
read as an attacker would."""

from __future__ import annotations

import errno
from pathlib import Path

from modelport.kms.aws import AwsKmsProvider
from modelport.kms.files import FileSystem, is_temp_name


class FlakyFileSystem(FileSystem):
    """Fails the next N renames or unlinks (optionally only of a matching path) with EIO.

    A storage failure injected at the OS edge: the code under test runs unchanged, only the
    rename that would make a new file visible raises, as a full or failing disk would.
    """

    def __init__(self) -> None:
        self.failures_left = 0
        self.failed = 0
        self.match = ""
        self.unlink_failures_left = 0
        self.unlink_match = ""

    def fail_next_replace(self, times: int = 1, *, match: str = "") -> None:
        self.failures_left = times
        self.match = match

    def replace(self, src: Path, dst: Path) -> None:
        if self.failures_left > 0 and self.match in str(dst):
            self.failures_left -= 1
            self.failed += 1
            raise OSError(errno.EIO, "injected storage failure")
        super().replace(src, dst)

    def fail_next_unlink(self, times: int = 1, *, match: str = "") -> None:
        self.unlink_failures_left = times
        self.unlink_match = match

    def unlink(self, path: Path) -> None:
        if self.unlink_failures_left > 0 and self.unlink_match in str(path):
            self.unlink_failures_left -= 1
            self.failed += 1
            raise OSError(errno.EIO, "injected storage failure")
        super().unlink(path)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), for before/after comparisons."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and is_temp_name(p.name)]


def aws_provider_for(endpoint: str) -> AwsKmsProvider:
    """The real boto3 client against the loopback KMS server, with dummy credentials."""
    return AwsKmsProvider(
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        max_attempts=1,
        connect_timeout=2,
        read_timeout=5,
    )


def kek_materials(keystore_root: Path, master_key: bytes, key_ref: str) -> dict[int, bytes]:
    """Every version's raw key material, read the way an attacker holding the master key would.

    Mirrors the documented key-file layout of modelport.kms.local (nonce | AES-GCM(material),
    associated data = label | key ref | version) on purpose, without going through the class.
    """
    import base64
    import json

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    doc = json.loads((keystore_root / f"{key_ref}.json").read_bytes())
    out = {}
    for number, entry in doc.get("versions", {}).items():
        sealed = base64.b64decode(entry["material"])
        aad = b"modelport/keystore/material/v1\x00" + key_ref.encode() + b"\x00" + number.encode()
        out[int(number)] = AESGCM(master_key).decrypt(sealed[:12], sealed[12:], aad)
    return out
