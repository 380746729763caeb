"""Where the stream processor gets layer keys: JWE private keys and the broker.

JWE private keys come from the payload (ocicrypt ``privkeys``/``privkeys-passwords``,
what ``ctr-enc``/imgcrypt clients pass) and from a keys directory
(``--decryption-keys-path``, the directory the CRI's node key model uses).  Broker key
packets are found under ``provider.attestation-agent`` (what ``layerseal copy`` and
CoCo tools write) and ``provider.layerseal`` (what skopeo writes through the
keyprovider); they are opened through :class:`layerseal.keyprovider.provider.Provider`,
whose attestation token and enclave key are cached on disk (mode 0600, flock'd), so
the per-layer processes of one pull attest once.  Released KEKs are not cached: each
layer is a fresh release decision, so a revoked key fails the next layer that needs it.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from layerseal.containerd.payload import PRIVKEYS, PRIVKEYS_PASSWORDS
from layerseal.crypto.keys import PrivateKey, load_private_key
from layerseal.crypto.keywrap import JweUnwrapper, KeyUnwrapper, LayerContext
from layerseal.errors import BadInputError
from layerseal.keyprovider import protocol
from layerseal.keyprovider.provider import Provider

#: annotation schemes whose blobs are layerseal/CoCo key packets
PACKET_SCHEMES = ("provider.attestation-agent", "provider.layerseal")
MAX_KEY_FILE = 1 << 20


def payload_keys(parameters: Mapping[str, tuple[bytes, ...]]) -> list[PrivateKey]:
    """Private keys of ``privkeys`` (with ``privkeys-passwords`` when given, by position)."""
    keys = parameters.get(PRIVKEYS, ())
    passwords = parameters.get(PRIVKEYS_PASSWORDS, ())
    out = []
    for i, data in enumerate(keys):
        password = passwords[i] if i < len(passwords) and passwords[i] else None
        out.append(load_private_key(data, f"payload privkeys[{i}]", password))
    return out


def directory_keys(directory: Path) -> list[PrivateKey]:
    """Every private key file in *directory* (not recursive); public keys (``*.pub``) are skipped."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise BadInputError(
            f"--decryption-keys-path {directory}: expected a readable directory, seen {exc.strerror}"
        ) from exc
    out = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or path.name.endswith(".pub") or path.name.startswith("."):
            continue
        if st.st_size > MAX_KEY_FILE:
            raise BadInputError(
                f"decryption key {path}: expected at most {MAX_KEY_FILE} bytes, seen {st.st_size}"
            )
        out.append(load_private_key(path.read_bytes(), f"decryption key {path}"))
    return out


class PacketUnwrapper:
    """Opens broker key packets through the keyprovider's attested, cached session."""

    def __init__(self, provider: Provider, parameters: Mapping[str, tuple[bytes, ...]]) -> None:
        self.provider = provider
        self.parameters = parameters

    def handles(self, scheme: str) -> bool:
        return scheme in PACKET_SCHEMES

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None:
        return self.provider.unwrap(protocol.UnwrapRequest(self.parameters, blob))


class NoBroker:
    """Stands in for the broker when none is configured, so a packet-only layer says what is missing."""

    def handles(self, scheme: str) -> bool:
        return scheme in PACKET_SCHEMES

    def unwrap(self, scheme: str, blob: bytes, layer: LayerContext) -> bytes | None:
        raise BadInputError(
            f"{layer}: its key is a broker key packet ({scheme}): expected the broker URL "
            "(--kbs in the stanza's args, $LAYERSEAL_KBS_URL or the keyprovider config file), seen none"
        )


def unwrappers(
    keys: Sequence[PrivateKey],
    provider: Provider | None,
    parameters: Mapping[str, tuple[bytes, ...]],
) -> tuple[KeyUnwrapper, ...]:
    out: list[KeyUnwrapper] = []
    if keys:
        out.append(JweUnwrapper(keys))
    out.append(PacketUnwrapper(provider, parameters) if provider is not None else NoBroker())
    return tuple(out)
