"""The attester side of the simulated TEE: platform directory and evidence producer.

``init_platform(dir)`` writes ``platform-key.pem`` (EC P-384, PKCS#8, mode 0600),
``platform-cert.pem`` (self-signed) and ``enclave.json`` (the measurement, svn and
debug flag the simulated enclave reports).  ``SimAttester`` signs reports with it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from layerseal.attest import sim
from layerseal.attest.x509util import certificate_fingerprint, load_certificate
from layerseal.errors import BadInputError, DeniedError, NotFoundError

KEY_FILE = "platform-key.pem"
CERT_FILE = "platform-cert.pem"
ENCLAVE_FILE = "enclave.json"
DEFAULT_MEASUREMENT = hashlib.sha384(b"layerseal sim enclave").hexdigest()


@dataclass(frozen=True)
class PlatformInfo:
    directory: Path
    fingerprint: str
    certificate_pem: bytes
    measurement: str
    svn: int
    debug: bool


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def init_platform(
    directory: str | os.PathLike[str],
    *,
    measurement: str = DEFAULT_MEASUREMENT,
    svn: int = 2,
    debug: bool = False,
    common_name: str = "layerseal sim platform",
) -> PlatformInfo:
    """Create a new simulated platform in *directory* (refuses to overwrite a key)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if (root / KEY_FILE).exists():
        raise BadInputError(f"sim platform {root}: expected no {KEY_FILE}, seen one (refusing to overwrite)")
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_private(root / KEY_FILE, key_pem)
    (root / CERT_FILE).write_bytes(cert_pem)
    enclave = {"measurement": measurement, "svn": svn, "debug": debug}
    (root / ENCLAVE_FILE).write_text(json.dumps(enclave, indent=2) + "\n")
    return load_platform_info(root)


def load_platform_info(directory: str | os.PathLike[str]) -> PlatformInfo:
    root = Path(directory)
    try:
        cert_pem = (root / CERT_FILE).read_bytes()
        enclave = json.loads((root / ENCLAVE_FILE).read_text())
    except FileNotFoundError as exc:
        raise NotFoundError(f"sim platform {root}: expected {CERT_FILE} and {ENCLAVE_FILE}") from exc
    except ValueError as exc:
        raise BadInputError(f"sim platform {root}/{ENCLAVE_FILE}: expected JSON") from exc
    der = load_certificate(cert_pem)
    return PlatformInfo(
        directory=root,
        fingerprint=certificate_fingerprint(der),
        certificate_pem=cert_pem,
        measurement=str(enclave.get("measurement", DEFAULT_MEASUREMENT)),
        svn=int(enclave.get("svn", 0)),
        debug=bool(enclave.get("debug", False)),
    )


class SimAttester:
    """Produces sim evidence for a report data; overrides simulate other enclaves."""

    tee = sim.TEE

    def __init__(
        self,
        platform_dir: str | os.PathLike[str],
        *,
        measurement: str | None = None,
        svn: int | None = None,
        debug: bool | None = None,
    ) -> None:
        info = load_platform_info(platform_dir)
        key_path = Path(platform_dir) / KEY_FILE
        mode = key_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DeniedError(f"sim platform key {key_path}: expected mode 0600, seen {oct(mode & 0o777)}")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise BadInputError(f"sim platform key {key_path}: expected an EC P-384 private key")
        self._key = key
        self._cert_der = load_certificate(info.certificate_pem)
        self.measurement = info.measurement if measurement is None else measurement
        self.svn = info.svn if svn is None else svn
        self.debug = info.debug if debug is None else debug
        self.fingerprint = info.fingerprint

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Signed evidence carrying *report_data* (64 bytes) and this enclave's facts."""
        report = sim.encode_report(self.measurement, report_data, self.svn, self.debug)
        signature = self._key.sign(report, ec.ECDSA(hashes.SHA384()))
        return sim.make_evidence(report, signature, self._cert_der)
