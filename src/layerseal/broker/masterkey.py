"""Loading (or creating) the broker's master key: a file with mode 0600, an env variable,
or an AES key inside a PKCS#11 token named by an RFC 7512 URI.

The master key encrypts every key the broker holds; it is never written to the database.
A group- or world-readable key (or PIN) file is refused rather than silently trusted.
A token key is used in place and never leaves the token (non-extractable, sensitive).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerseal.broker.custody import KeyCustody, MasterKeyCustody, Pkcs11Custody
from layerseal.errors import BadInputError, DeniedError, NotFoundError, TransportError
from layerseal.wire.b64 import b64decode

ENV_VAR = "LAYERSEAL_MASTER_KEY"
KEY_SIZE = 32


def decode_master_key(text: str, what: str) -> bytes:
    """A master key written as base64 (a key file's line, the env variable, a backup)."""
    return b64decode(text.strip(), what, KEY_SIZE, expected=f"base64 of {KEY_SIZE} bytes")


def write_private_file_once(path: Path, text: str) -> bool:
    """Create *path* (mode 0600) holding *text*, complete or not at all; False if it exists.

    The content goes to a temporary file first and is hard-linked into place, so of several
    processes creating the same file at once exactly one wins and no reader ever sees it
    empty or half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_master_key_file(path: Path) -> bytes:
    """Write a fresh random master key (base64) to *path* with mode 0600; fail if it exists."""
    key = secrets.token_bytes(KEY_SIZE)
    if not write_private_file_once(path, base64.b64encode(key).decode() + "\n"):
        raise BadInputError(f"master key file {path}: expected none (to create), seen one")
    return key


def read_master_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise NotFoundError(f"master key file {path}: expected to exist, seen none") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeniedError(
            f"master key file {path}: expected mode 0600 (owner only), seen {oct(mode & 0o777)}; "
            "fix with chmod 600"
        )
    return key_file_lines(path, f"master key file {path}")[0]


def key_file_lines(path: Path, what: str) -> list[bytes]:
    """Every key of a key file: the first seals, later ones (retired by ``broker master-key
    rotate``) only open what was sealed under them."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise BadInputError(f"{what}: expected base64 of {KEY_SIZE} bytes, seen an empty file")
    return [decode_master_key(line, what) for line in lines]


def load_master_key(
    path: Path | None, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> bytes:
    """The master key from ``$LAYERSEAL_MASTER_KEY`` if set, else from *path* (created if asked)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_VAR)
    if text:
        return decode_master_key(text, f"environment variable {ENV_VAR}")
    if path is None:
        raise BadInputError(f"master key: expected ${ENV_VAR} or a master key file, seen neither")
    if create:
        try:
            return read_master_key_file(path)
        except NotFoundError:
            pass
        # replicas starting together: one file wins, the others read that one
        key = secrets.token_bytes(KEY_SIZE)
        if write_private_file_once(path, base64.b64encode(key).decode() + "\n"):
            return key
    return read_master_key_file(path)


PKCS11_SCHEME = "pkcs11:"
PKCS11_MODULE_ENV = "LAYERSEAL_PKCS11_MODULE"
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_PATH_ATTRS = {"token", "object", "serial", "id", "type", "manufacturer", "model", "library-description"}
_QUERY_ATTRS = {"pin-value", "pin-source", "module-path", "module-name"}


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 ``pkcs11:`` URI the broker uses."""

    object: str
    token: str | None = None
    serial: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URI without its PIN, for logs and errors."""
        parts = [f"object={self.object}"]
        if self.token is not None:
            parts.insert(0, f"token={self.token}")
        if self.serial is not None:
            parts.append(f"serial={self.serial}")
        return "pkcs11:" + ";".join(parts)

    def pin(self) -> str:
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            raise BadInputError(f"{self.redacted()}: expected pin-value or pin-source, seen neither")
        source = self.pin_source.removeprefix("file://").removeprefix("file:")
        path = Path(source)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as exc:
            raise NotFoundError(f"{self.redacted()} pin-source {path}: expected a file, seen none") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DeniedError(f"PIN file {path}: expected mode 0600 (owner only), seen {oct(mode & 0o777)}")
        return path.read_text().strip()


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse ``pkcs11:token=...;object=...?pin-value=...`` (RFC 7512, percent-decoded)."""
    if not text.startswith(PKCS11_SCHEME):
        raise BadInputError("master key URI: expected 'pkcs11:...', seen another scheme")
    path, _, query = text[len(PKCS11_SCHEME) :].partition("?")
    attrs: dict[str, str] = {}
    for part, sep, allowed in ((path, ";", _PATH_ATTRS), (query, "&", _QUERY_ATTRS)):
        for item in filter(None, part.split(sep)):
            name, eq, value = item.partition("=")
            if not eq or name not in allowed:
                # the name only: values may be PINs
                raise BadInputError(
                    f"pkcs11 URI attribute: expected one of {sorted(allowed)}, seen {name[:20]!r}"
                )
            if name in attrs:
                raise BadInputError(f"pkcs11 URI attribute {name}: expected once, seen twice")
            attrs[name] = urllib.parse.unquote(value)
    if not attrs.get("object"):
        raise BadInputError("pkcs11 URI: expected 'object=<key label>', seen none")
    return Pkcs11Uri(
        object=attrs["object"],
        token=attrs.get("token"),
        serial=attrs.get("serial"),
        module_path=attrs.get("module-path"),
        pin_source=attrs.get("pin-source"),
        pin_value=attrs.get("pin-value"),
    )


_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _pkcs11_lib(module: str) -> Any:
    try:
        import pkcs11
    except ImportError as exc:
        raise BadInputError("pkcs11 master key: expected the python-pkcs11 package, seen it missing") from exc
    with _LIBS_LOCK:
        lib = _LIBS.get(module)
        if lib is None:
            if not Path(module).exists():
                raise NotFoundError(f"pkcs11 module {module}: expected a PKCS#11 library, seen none")
            lib = _LIBS[module] = pkcs11.lib(module)
        return lib


def open_pkcs11_custody(
    uri_text: str, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> Pkcs11Custody:
    """Log in to the token the URI names and use its AES key as the master key.

    With *create*, a missing key is generated in the token: AES-256, sensitive,
    non-extractable.  An existing key that could be exported is refused.
    """
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    env = os.environ if environ is None else environ
    uri = parse_pkcs11_uri(uri_text)
    module = uri.module_path or env.get(PKCS11_MODULE_ENV) or DEFAULT_PKCS11_MODULE
    lib = _pkcs11_lib(module)
    pin = uri.pin()
    where = uri.redacted()
    try:
        token = lib.get_token(token_label=uri.token, token_serial=uri.serial.encode() if uri.serial else None)
    except pkcs11.NoSuchToken as exc:
        raise NotFoundError(f"{where}: expected a token with this label/serial, seen none") from exc
    except pkcs11.MultipleTokensReturned as exc:
        raise BadInputError(f"{where}: expected one matching token, seen several (add serial=)") from exc
    try:
        session = token.open(user_pin=pin, rw=create)
    except pkcs11.PinIncorrect as exc:
        raise DeniedError(f"{where}: expected the user PIN, seen an incorrect one") from exc
    except pkcs11.PKCS11Error as exc:
        raise TransportError(f"{where}: login failed ({type(exc).__name__})") from exc
    try:
        try:
            key = session.get_key(label=uri.object, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY)
        except pkcs11.NoSuchKey:
            if not create:
                raise NotFoundError(f"{where}: expected an AES key with this label, seen none") from None
            key = session.generate_key(
                KeyType.AES,
                256,
                label=uri.object,
                store=True,
                template={
                    Attribute.TOKEN: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                },
            )
        except pkcs11.MultipleObjectsReturned:
            raise BadInputError(f"{where}: expected one key with this label, seen several") from None
        if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
            raise DeniedError(f"{where}: expected a sensitive, non-extractable key, seen an exportable one")
        if key[Attribute.VALUE_LEN] != KEY_SIZE:
            raise BadInputError(f"{where}: expected an AES-256 key, seen {key[Attribute.VALUE_LEN] * 8} bits")
    except BaseException:
        session.close()
        raise
    # the id names the key, not the token's serial, so a restored token backup still opens blobs
    label = (token.label or "").encode()
    key_id = hashlib.sha256(b"layerseal pkcs11 key id\0" + label + b"\0" + uri.object.encode()).digest()[:8]
    return Pkcs11Custody(key, key_id, where, session)


def open_custody(
    key_file: Path | None, uri: str | None, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> KeyCustody:
    """The master key's custody: a PKCS#11 token key (*uri*), else ``$LAYERSEAL_MASTER_KEY``
    or *key_file* (created once if *create*)."""
    if uri is not None:
        if not uri.startswith(PKCS11_SCHEME):
            raise BadInputError("--master-key: expected a 'pkcs11:' URI, seen another scheme")
        return open_pkcs11_custody(uri, create=create, environ=environ)
    key = load_master_key(key_file, create=create, environ=environ)
    env = os.environ if environ is None else environ
    if key_file is not None and not env.get(ENV_VAR) and key_file.is_file():
        retired = key_file_lines(key_file, f"master key file {key_file}")[1:]
        if retired:
            return MasterKeyCustody(key, retired=retired)
    return MasterKeyCustody(key)
