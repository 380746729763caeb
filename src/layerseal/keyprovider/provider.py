"""keywrap and keyunwrap against the layerseal broker; shared by the cmd tool and the gRPC server.

keywrap: the broker creates the layer's KEK (``POST /api/v1/keys``, publisher token)
and returns the CoCo key packet, which becomes ``annotation``.  The layer digest the
broker files the key under is the ``digest`` inside the private options, because
ocicrypt hands a provider nothing else about the layer.

keyunwrap: attest (RCAR) with a fresh P-256 enclave key, or reuse a cached token and
the key it is bound to, fetch the KEK named by the packet's ``kid`` and open the packet.
A Trustee KBS works too, through the engine's client logic (``kbs.rcarclient``): a kid outside
layerseal's scheme (any ``kbs:///<repo>/<type>/<tag>``) is fetched with ``GET
/kbs/v0/resource/...``, and so is every kid once the batch endpoint proves absent;
packets made by CoCo's tools (A256GCM or A256CTR) are opened.
A token the broker refuses (expired, revoked, broker key rotated) is dropped and the
enclave attests once more.  Released KEKs are never cached: every unwrap is a fresh
release decision, so revocation and policy changes apply at the next layer.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerseal.errors import BadInputError, DeniedError, LayersealError
from layerseal.fileio import read_bytes
from layerseal.keyprovider import protocol
from layerseal.keyprovider.params import CONFIG_ENV, TOKEN_ENV, Settings, parse_rest, settings_from_config
from layerseal.keyprovider.params import settings_from_env as _settings_from_env
from layerseal.keyprovider.tokencache import CachedToken, TokenCache, cache_key, token_exp
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    from layerseal.attest.claims import Attester
    from layerseal.kbs.rcarclient import Opener
    from layerseal.keyprovider.brokerhttp import BrokerHttp

#: layerseal.crypto.keywrap.BROKER_PROVIDER_NAMES (not imported: the cmd tool must start fast)
BROKER_PROVIDER_NAMES = ("attestation-agent", "layerseal")

#: seconds a token without a readable ``exp`` is reused before attesting again
OPAQUE_TOKEN_LIFETIME = 300.0

_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def load_settings(flags: Settings, config_file: str | None, env: Mapping[str, str]) -> Settings:
    """Flags over environment over the config file (``--config`` or $LAYERSEAL_KEYPROVIDER_CONFIG)."""
    path = config_file or env.get(CONFIG_ENV)
    config = Settings()
    if path:
        text = read_bytes(path, f"keyprovider config {path}")
        config = settings_from_config(loads(text, f"keyprovider config {path}"), path)
    return flags.over(_settings_from_env(env).over(config))


def read_token(settings: Settings, env: Mapping[str, str]) -> str:
    """The publisher API token: ``token-file`` first, else $LAYERSEAL_KBS_TOKEN."""
    if settings.token_file:
        token = read_bytes(settings.token_file, f"token-file {settings.token_file}").decode().strip()
        if not token:
            raise BadInputError(f"token-file {settings.token_file}: expected a token, seen an empty file")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise BadInputError(
            f"keywrap: expected a broker API token (token-file=PATH in provider:NAME:..., --token-file, "
            f"$LAYERSEAL_KBS_TOKEN_FILE or ${TOKEN_ENV}), seen none"
        )
    return token


def layer_digest(optsdata: bytes) -> str:
    """The plaintext layer digest inside ocicrypt's private options."""
    try:
        doc = json.loads(optsdata)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(
            "keywrap optsdata: expected ocicrypt private options JSON, seen other bytes"
        ) from exc
    digest = doc.get("digest") if isinstance(doc, dict) else None
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        shown = str(digest)[:80] if digest is not None else "none"
        raise BadInputError(f"keywrap optsdata field 'digest': expected 'sha256:<64 hex>', seen {shown!r}")
    return digest


def _rewrap(exc: LayersealError, prefix: str) -> LayersealError:
    """The same error family with *prefix* naming the layer or key concerned."""
    try:
        return type(exc)(f"{prefix}: {exc}")
    except TypeError:  # pragma: no cover - every layerseal error takes one message
        return LayersealError(f"{prefix}: {exc}")


@dataclass
class _Live:
    entry: CachedToken
    key: EllipticCurvePrivateKey


class Provider:
    """Answers keyprovider requests; thread-safe, keeps tokens in memory across requests."""

    def __init__(
        self,
        name: str,
        base: Settings,
        *,
        env: Mapping[str, str] | None = None,
        cache: TokenCache | None = None,
        clock: Callable[[], float] = time.time,
        attester_factory: Callable[[Settings], Attester] | None = None,
    ) -> None:
        self.name = name
        #: a provider under one of the broker names also reads parameters given for the other
        #: (an ocicrypt config written when ``layerseal`` was the default name passes no --name)
        self.aliases = (
            tuple(n for n in BROKER_PROVIDER_NAMES if n != name) if name in BROKER_PROVIDER_NAMES else ()
        )
        self.base = base
        self.env = dict(os.environ if env is None else env)
        self.cache = cache
        self.clock = clock
        self.attester_factory = attester_factory or make_attester
        self.attestations = 0  # RCAR runs by this process (tests and the benchmark read it)
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._http: dict[tuple[str, str | None], BrokerHttp] = {}

    def close(self) -> None:
        for http in self._http.values():
            http.close()

    def settings_for(self, parameters: Mapping[str, tuple[bytes, ...]]) -> Settings:
        for name in (self.name, *self.aliases):
            rest = protocol.provider_parameter(parameters, name)
            if rest is not None:
                return parse_rest(rest, name).over(self.base)
        return self.base

    def http(self, settings: Settings) -> BrokerHttp:
        url = settings.kbs
        if not url:
            raise BadInputError(
                f"keyprovider: expected the broker URL (kbs=URL in provider:{self.name}:..., --kbs, "
                "$LAYERSEAL_KBS_URL or the config file), seen none"
            )
        # http.client and ssl load for the first request, not to read one and fail on bad input
        from layerseal.keyprovider.brokerhttp import BrokerHttp

        with self._lock:
            client = self._http.get((url, settings.cacert))
            if client is None:
                client = self._http[(url, settings.cacert)] = BrokerHttp(url, cacert=settings.cacert)
        return client

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: bytes) -> bytes:
        """One request in, one reply out (both the keyprovider JSON)."""
        return self.answer(protocol.parse_request(request))

    def answer(self, parsed: protocol.Request) -> bytes:
        """The reply to a request :func:`protocol.parse_request` read."""
        if isinstance(parsed, protocol.WrapRequest):
            return protocol.wrap_reply(self.wrap(parsed), parsed.reply_form)
        return protocol.unwrap_reply(self.unwrap(parsed))

    # ------------------------------------------------------------------ keywrap

    def wrap(self, request: protocol.WrapRequest) -> bytes:
        """The key packet the broker made for this layer (ocicrypt stores it as the annotation)."""
        settings = self.settings_for(request.parameters)
        digest = layer_digest(request.optsdata)
        if not settings.repo:
            raise BadInputError(
                f"keywrap of layer {digest}: expected the image repository (repo=NAME in "
                f"provider:{self.name}:..., --repo, $LAYERSEAL_KBS_REPOSITORY or the config file), seen none"
            )
        http = self.http(settings)
        token = read_token(settings, self.env)
        try:
            doc = http.create_layer_key(token, settings.repo, digest, request.optsdata, settings.tenant)
            return b64decode(doc["packet"], "broker POST /api/v1/keys packet")
        except LayersealError as exc:
            raise _rewrap(exc, f"keywrap of layer {digest}") from exc

    # ------------------------------------------------------------------ keyunwrap

    def unwrap(self, request: protocol.UnwrapRequest) -> bytes:
        """The private options sealed in a CoCo key packet (layerseal's or CoCo tools')."""
        from layerseal.kbs.kbsforms import resource_path_of
        from layerseal.kbs.packets import KeyPacket, unwrap_key_packet

        try:
            packet = KeyPacket.parse(request.annotation)
            path = resource_path_of(packet.kid)
        except BadInputError as exc:
            raise BadInputError(
                f"keyunwrap annotation: expected a layerseal key packet (CoCo AnnotationPacket) "
                f"{{kid: kbs:///<repo>/<type>/<tag>, wrapped_data, iv, wrap_type}}, "
                f"seen another blob ({exc})"
            ) from exc
        settings = self.settings_for(request.parameters)
        http = self.http(settings)
        try:
            kek = self._release(http, settings, path)
            return unwrap_key_packet(request.annotation, kek)
        except LayersealError as exc:
            raise _rewrap(exc, f"keyunwrap {packet.kid}") from exc

    def _release(self, http: BrokerHttp, settings: Settings, path: str) -> bytes:
        """The KEK at *path*, with the cached token, or a fresh one if the broker refuses it."""
        from layerseal.keyprovider.enclavekey import open_jwe

        def credentials(refused: str | None) -> tuple[str, Opener]:
            live = self._session(http, settings, refused)
            return live.entry.token, lambda doc: open_jwe(doc, live.key)

        return http.keks(credentials, [path])[path]

    def _identity(self, settings: Settings) -> tuple[str, str]:
        tee = settings.tee or "sim"
        if tee == "sim":
            platform = settings.sim_platform
            return tee, str(Path(platform).resolve()) if platform else ""
        return tee, ""

    def _session(self, http: BrokerHttp, settings: Settings, refused: str | None) -> _Live:
        """The live token of this broker and TEE, never *refused* (expired early, revoked or
        the broker's key changed): from memory, the token cache or a new attestation."""
        from layerseal.keyprovider.enclavekey import key_from_d

        tee, identity = self._identity(settings)
        ckey = cache_key(http.url, tee, identity)
        with self._lock:
            live = self._live.get(ckey)
            if live is not None and live.entry.usable(self.clock()) and live.entry.token != refused:
                return live
            if self.cache is None:
                live = self._attest(http, settings)
            else:
                with self.cache.locked(ckey):
                    entry = self.cache.load(ckey, self.clock())
                    if entry is not None and entry.token != refused:
                        live = _Live(entry, key_from_d(entry.private_d, entry.tee_pubkey))
                    else:
                        live = self._attest(http, settings)
                        self.cache.store(ckey, live.entry)
            self._live[ckey] = live
            return live

    def _expiry(self, token: str) -> float:
        """When to attest again: the token's ``exp``; a token without one (KBS tokens are
        opaque to clients) is used for a short while, and a 401 renews it earlier."""
        try:
            return token_exp(token)
        except BadInputError:
            return self.clock() + OPAQUE_TOKEN_LIFETIME

    def _attest(self, http: BrokerHttp, settings: Settings) -> _Live:
        from layerseal.attest.binding import report_data
        from layerseal.kbs.rcarclient import attestation_body
        from layerseal.keyprovider import enclavekey

        attester = self.attester_factory(settings)
        key = enclavekey.generate()
        pubkey = enclavekey.tee_pubkey(key)
        challenge = http.challenge(attester.tee)
        evidence = attester.evidence(report_data(challenge.nonce, pubkey, "", challenge.hash_algorithm))
        try:
            token = http.attest(challenge.session, attestation_body(challenge.nonce, pubkey, evidence))
        except DeniedError as exc:
            raise _rewrap(exc, f"attestation ({attester.tee})") from exc
        self.attestations += 1
        entry = CachedToken(token, self._expiry(token), pubkey, enclavekey.private_d(key))
        return _Live(entry, key)


def make_attester(settings: Settings) -> Attester:
    """The evidence producer: ``tee`` (default ``sim``) and, for sim, the platform directory."""
    from layerseal.attest.attesters import make_attester as choose

    return choose(
        settings.tee or "sim",
        settings.sim_platform,
        where="--sim-platform, LAYERSEAL_SIM_PLATFORM or 'sim-platform' in the config file",
    )
