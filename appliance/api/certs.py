"""`bootd certs`: a CA, a server certificate and client certificates for the read-write API.

As matchbox's scripts/tls/cert-gen does it (research/matchbox.md §6.3), with the `cryptography` package
instead of openssl: ca.key (RSA 4096) + ca.crt (self-signed, CA:true pathlen 0, 10 years), server.key
(RSA 2048) + server.crt (EKU serverAuth, the SANs given, 1 year), client.key + client.crt (EKU clientAuth,
1 year). SHA-256 signatures, unencrypted keys written 0600 (created with that mode, never widened).
The server keeps ca.crt, server.crt, server.key; a client keeps ca.crt and its own pair.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.atomic import write_atomically


class CertError(Exception):
    """A bad SAN, a missing CA, a file that would be overwritten: the message says which."""


def parse_sans(text: str) -> list[x509.GeneralName]:
    """`DNS:matchbox.example.com,IP:10.77.0.1` (cert-gen's `DNS.1:`/`IP.1:` forms are accepted too)."""
    names: list[x509.GeneralName] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition(":")
        kind = kind.split(".")[0].upper()
        if not sep or not value:
            raise CertError(f"SAN {item!r}: expected DNS:name or IP:address")
        if kind == "DNS":
            names.append(x509.DNSName(value))
        elif kind == "IP":
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(value)))
            except ValueError:
                raise CertError(f"SAN {item!r}: {value!r} is not an IP address") from None
        else:
            raise CertError(f"SAN {item!r}: only DNS: and IP: names are supported")
    if not names:
        raise CertError("give at least one SAN, e.g. --san DNS:matchbox.example.com,IP:10.77.0.1")
    return names


def _key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def issue(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, common_name: str, *, client: bool,
          sans: Sequence[x509.GeneralName] = (), days: int = 365, not_before: datetime.datetime | None = None,
          key: rsa.RSAPrivateKey | None = None) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = key or _key(2048)
    start = not_before or _now() - datetime.timedelta(minutes=5)  # a little slack for clock skew
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_ca(common_name: str = "bootd-ca", days: int = 3650) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = _key(4096)
    start = _now() - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


# --- files ----------------------------------------------------------------------------------------------

def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Atomically (a kill during `bootd certs` leaves the old file or the new one, never half a key), and
    without --force never over an existing file."""
    for leftover in path.parent.glob(f".{path.name}.*"):  # a temp file of a write a kill cut short
        leftover.unlink(missing_ok=True)
    try:
        write_atomically(path, data, mode, replace=force)
    except FileExistsError:
        raise CertError(f"{path} exists; remove it or pass --force") from None
    except OSError as exc:
        raise CertError(f"{path}: cannot write: {exc.strerror}") from None


def write_pair(directory: Path, stem: str, key: rsa.RSAPrivateKey, cert: x509.Certificate, force: bool) -> None:
    _write(directory / f"{stem}.key", key_pem(key), 0o600, force)
    _write(directory / f"{stem}.crt", cert_pem(cert), 0o644, force)


def init(directory: Path, sans: str, *, force: bool = False) -> list[str]:
    """ca, server and client pairs in `directory`; the lines to print."""
    names = parse_sans(sans)
    if directory.exists() and not directory.is_dir():
        raise CertError(f"{directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"{directory}: cannot make the directory: {exc.strerror}") from None
    if not force and (existing := [f"{directory}/{stem}.{kind}" for stem in ("ca", "server", "client")
                                   for kind in ("key", "crt") if (directory / f"{stem}.{kind}").exists()]):
        raise CertError(f"{'; '.join(f'{path} exists' for path in existing)}: remove them or pass --force")
    # every key made before the first file is written: a failure or a kill in between leaves the old set
    ca_key, ca_cert = make_ca()
    server = issue(ca_key, ca_cert, "bootd-server", client=False, sans=names)
    client_pair = issue(ca_key, ca_cert, "bootd-client", client=True)
    write_pair(directory, "ca", ca_key, ca_cert, force)
    write_pair(directory, "server", *server, force)
    write_pair(directory, "client", *client_pair, force)
    return [f"wrote {directory}/ca.crt, ca.key (keep the key offline if you can)",
            f"wrote {directory}/server.crt, server.key (SANs: {sans}): for bootd's api section",
            f"wrote {directory}/client.crt, client.key: for bootd apply, bootcmd or terraform"]


def load_ca(directory: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except OSError as exc:
        raise CertError(f"cannot read the CA: {exc.filename}: {exc.strerror} (run bootd certs init first)") from None
    except ValueError as exc:
        raise CertError(f"{directory}: the CA files do not load: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertError(f"{directory}/ca.key: expected an RSA key")
    return key, cert


def client(directory: Path, name: str, *, days: int = 365, force: bool = False) -> list[str]:
    """Another client certificate `<name>.crt`/`<name>.key`, from the CA in `directory`."""
    if not name or "/" in name or name.startswith("."):
        raise CertError(f"client name {name!r}: a plain file name is needed")
    ca_key, ca_cert = load_ca(directory)
    write_pair(directory, name, *issue(ca_key, ca_cert, name, client=True, days=days), force)
    return [f"wrote {directory}/{name}.crt, {name}.key (valid {days} days)"]
