"""OpenPGP signatures, checked with gpgv against a keyring made of the distribution's public keys only.

Why gpgv (Debian's package `gpgv`, GnuPG's verify-only tool): it is what apt itself trusts to check Debian's
archive signatures, is maintained with GnuPG, reads every key type the distributions use (RSA 4096 today),
needs no agent, no trustdb and no import into anyone's keyring, and reports machine-readable status lines.
The Python OpenPGP packages were the alternative: PGPy has had no release since 2022 and breaks on current
`cryptography`; pysequoia is young. gpgv "assumes all keys in the keyring are trustworthy", which is exactly
the contract: the keyring holds the shipped keys (appliance/assets/keys/, package data) or the file given
with --keyring, and nothing else.

The keyring is built per check from armored or binary key files (armor is removed here, in Python, so
only gpgv is needed), written to a private temporary file and removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from appliance.assets.sources import OsName

SHIPPED_KEYS = {OsName.FLATCAR: "flatcar.asc", OsName.FCOS: "fedora.asc"}
_ARMOR = re.compile(r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL)


class KeyFileError(ValueError):
    """A key file that holds no OpenPGP public key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    ok: bool
    reason: str  # why not, or which key signed
    signer: str = ""  # the primary key's fingerprint, when good


def dearmor(text: str) -> bytes:
    """The binary packets of every armored public key block in `text` (RFC 4880 section 6.2)."""
    blocks = _ARMOR.findall(text)
    if not blocks:
        raise KeyFileError("no '-----BEGIN PGP PUBLIC KEY BLOCK-----' in it")
    out = bytearray()
    for block in blocks:
        # armor headers (Version:, Comment:) end at the first empty line; the checksum line starts with '='
        _headers, _, body = block.partition("\n\n") if "\n\n" in block else ("", "", block)
        lines = [line.strip() for line in body.replace("\r", "").splitlines()]
        data = "".join(line for line in lines if line and not line.startswith("="))
        try:
            out += base64.b64decode(data, validate=True)
        except ValueError:
            raise KeyFileError("an armored block is not base64") from None
    return bytes(out)


def key_bytes(data: bytes) -> bytes:
    """A key file's content as gpgv reads it: armored text is dearmored, binary packets are kept."""
    if b"-----BEGIN PGP" in data:
        return dearmor(data.decode("ascii", errors="replace"))
    if not data or not data[0] & 0x80:  # every OpenPGP packet's first byte has bit 7 set
        raise KeyFileError("not an OpenPGP key (neither armored nor binary packets)")
    return data


def shipped_keys(os_name: OsName) -> bytes:
    name = SHIPPED_KEYS[os_name]
    return key_bytes(resources.files("appliance.assets").joinpath("keys", name).read_bytes())


@contextmanager
def keyring_file(keys: bytes) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="bootd-keyring-", suffix=".gpg")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(keys)
        yield Path(name)
    finally:
        os.unlink(name)


def read_status(status: str, returncode: int) -> Verdict:
    """gpgv's --status-fd lines (GnuPG's doc/DETAILS) -> the verdict. Good only with VALIDSIG and exit 0;
    a signature by an expired key is good (the key was valid when the release was signed: older releases
    were signed with earlier yearly subkeys); a revoked key's is not."""
    words = [line.split() for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    codes = {w[1]: w[2:] for w in words if len(w) > 1}
    if "BADSIG" in codes:
        return Verdict(ok=False, reason="BAD signature: the file is not what the key signed (changed or truncated)")
    if "REVKEYSIG" in codes:
        return Verdict(ok=False, reason=f"signed by revoked key {(codes['REVKEYSIG'] or ['?'])[0]}")
    if "NO_PUBKEY" in codes or ("ERRSIG" in codes and codes["ERRSIG"][-1:] == ["9"]):
        key = (codes.get("NO_PUBKEY") or codes.get("ERRSIG") or ["?"])[0]
        return Verdict(ok=False, reason=f"signed by key {key}, which is not the distribution's signing key")
    if "NODATA" in codes:
        return Verdict(ok=False, reason="the signature file holds no OpenPGP signature")
    valid = codes.get("VALIDSIG")
    if returncode == 0 and valid:
        primary = valid[-1]
        subkey = valid[0]
        by = f"key {primary}" + (f" (subkey {subkey})" if subkey != primary else "")
        if "EXPKEYSIG" in codes:
            by += ", a key that has expired since"
        return Verdict(ok=True, reason=f"good signature by {by}", signer=primary)
    return Verdict(ok=False, reason=f"gpgv could not verify it (exit {returncode})")


async def verify(file: Path, signature: Path, keyring: Path) -> Verdict:
    try:
        process = await asyncio.create_subprocess_exec(
            "gpgv", "--keyring", str(keyring), "--status-fd", "1", str(signature), str(file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL)
    except FileNotFoundError:
        return Verdict(ok=False, reason="gpgv is not installed (apt-get install gpgv)")
    out, _ = await process.communicate()
    return read_status(out.decode(errors="replace"), process.returncode or 0)
