"""Settings of the keyprovider and the ``provider:NAME:REST`` parameter syntax (pure).

REST is a list of ``key=value`` items separated by ``;``::

    provider:attestation-agent:kbs=https://broker:8443;repo=team/app;token-file=/run/secrets/t

skopeo, podman and buildah read ``--encryption-key``/``--decryption-key`` as CSV (pflag
``StringSlice``), so a ``,`` there splits the key into pieces before ocicrypt sees it;
``;`` survives.  ``,`` is still accepted as a separator for a REST that arrives whole
(a CSV-quoted value, a daemon's configuration, layerseal's own tools).

===============  ======================================================  ============
key              meaning                                                 used by
===============  ======================================================  ============
``kbs``          broker base URL (``http://`` or ``https://``)            wrap, unwrap
``repo``         image repository the broker files the layer keys under   wrap
``tenant``       tenant (only for admin tokens; else the token's own)     wrap
``token-file``   file holding the publisher API token                     wrap
``cacert``       CA bundle to verify the broker's TLS certificate         wrap, unwrap
===============  ======================================================  ============

``provider:layerseal`` alone (ocicrypt then sends the word ``Enabled``) uses the defaults.
A token is never accepted inline: command lines end up in process lists and shell
history, so it comes from ``token-file`` or ``$LAYERSEAL_KBS_TOKEN``.  The machine-level
settings (``tee``, ``sim-platform``, ``cache-dir``) describe the enclave, not the image,
so they come from flags, the environment or the config file, never from REST.

Precedence, highest first: REST, command-line flags (the ``args`` of the ocicrypt
config), environment, config file (``--config`` / ``$LAYERSEAL_KEYPROVIDER_CONFIG``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerseal.errors import BadInputError

TOKEN_ENV = "LAYERSEAL_KBS_TOKEN"  # noqa: S105 -- an environment variable name
CONFIG_ENV = "LAYERSEAL_KEYPROVIDER_CONFIG"
ENABLED = "Enabled"  # what ocicrypt sends for a bare provider:NAME

#: REST keys -> Settings attribute
REST_KEYS = {"kbs": "kbs", "repo": "repo", "tenant": "tenant", "token-file": "token_file", "cacert": "cacert"}
#: config-file keys -> Settings attribute (REST keys plus machine settings)
CONFIG_KEYS = {**REST_KEYS, "tee": "tee", "sim-platform": "sim_platform", "cache-dir": "cache_dir"}
#: environment variables -> Settings attribute
ENV_KEYS = {
    "LAYERSEAL_KBS_URL": "kbs",
    "LAYERSEAL_KBS_REPOSITORY": "repo",
    "LAYERSEAL_KBS_TENANT": "tenant",
    "LAYERSEAL_KBS_TOKEN_FILE": "token_file",
    "LAYERSEAL_KBS_CACERT": "cacert",
    "LAYERSEAL_TEE": "tee",
    "LAYERSEAL_SIM_PLATFORM": "sim_platform",
    "LAYERSEAL_KEYPROVIDER_CACHE_DIR": "cache_dir",
}


@dataclass(frozen=True)
class Settings:
    """Where the broker is and how to talk to it; None = not given at this level."""

    kbs: str | None = None
    repo: str | None = None
    tenant: str | None = None
    token_file: str | None = None
    cacert: str | None = None
    tee: str | None = None
    sim_platform: str | None = None
    cache_dir: str | None = None

    def over(self, lower: Settings) -> Settings:
        """These settings, with the gaps filled from *lower*."""
        return Settings(
            **{
                f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(lower, f.name)
                for f in dataclasses.fields(self)
            }
        )


def _check(attr: str, value: str, where: str) -> str:
    if not value:
        raise BadInputError(f"{where}: expected a value, seen an empty one")
    if any(c.isspace() for c in value):
        raise BadInputError(f"{where}: expected no whitespace, seen {value[:80]!r}")
    if attr == "kbs":
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https") or not rest.split("/")[0]:
            raise BadInputError(
                f"{where}: expected an http:// or https:// URL with a host, seen {value[:80]!r}"
            )
        return value.rstrip("/")
    return value


def parse_rest(rest: str | None, provider: str = "layerseal") -> Settings:
    """Settings from the REST of ``provider:NAME:REST`` (None or ``Enabled`` = nothing given)."""
    if rest is None or rest.strip() in ("", ENABLED):
        return Settings()
    values: dict[str, str] = {}
    for index, item in enumerate(re.split(r"[;,]", rest), 1):
        # the item itself is not echoed: it could be a token pasted without a key
        where = f"provider:{provider} parameter item {index}"
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise BadInputError(
                f"{where}: expected key=value items separated by ';' ({', '.join(REST_KEYS)}), seen no '='"
            )
        if key == "token":
            raise BadInputError(
                f"provider:{provider} parameter 'token': expected token-file=PATH or ${TOKEN_ENV}, "
                "seen the token inline (it would leak into process lists and shell history)"
            )
        if key not in REST_KEYS:
            hint = " (set it with a flag, the environment or the config file)" if key in CONFIG_KEYS else ""
            raise BadInputError(
                f"provider:{provider} parameter key: expected one of {', '.join(REST_KEYS)}, "
                f"seen {key[:40]!r}{hint}"
            )
        attr = REST_KEYS[key]
        if attr in values:
            raise BadInputError(f"provider:{provider} parameter {key!r}: expected once, seen twice")
        values[attr] = _check(attr, value.strip(), f"provider:{provider} parameter {key!r}")
    return Settings(**values)


def settings_from_config(doc: Any, where: str) -> Settings:
    """Settings from a parsed config file: a JSON object with the keys of ``CONFIG_KEYS``."""
    if not isinstance(doc, dict):
        raise BadInputError(f"keyprovider config {where}: expected a JSON object, seen {type(doc).__name__}")
    if "token" in doc:
        raise BadInputError(f"keyprovider config {where}: expected token-file, seen an inline token")
    unknown = sorted(set(doc) - set(CONFIG_KEYS))
    if unknown:
        raise BadInputError(
            f"keyprovider config {where}: expected keys among {', '.join(CONFIG_KEYS)}, "
            f"seen {unknown[0][:40]!r}"
        )
    values: dict[str, str] = {}
    for key, value in doc.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadInputError(
                f"keyprovider config {where}: key {key!r}: expected a string, seen {type(value).__name__}"
            )
        values[CONFIG_KEYS[key]] = _check(CONFIG_KEYS[key], value, f"keyprovider config {where}: key {key!r}")
    return Settings(**values)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Settings from environment variables (``ENV_KEYS``); empty values count as unset."""
    values = {attr: _check(attr, env[name], name) for name, attr in ENV_KEYS.items() if env.get(name)}
    return Settings(**values)


def settings_to_rest(settings: Settings) -> str:
    """The REST text for *settings* (REST keys only, ``;``-separated), the inverse of ``parse_rest``."""
    inverse = {attr: key for key, attr in REST_KEYS.items()}
    items = [
        f"{inverse[f.name]}={getattr(settings, f.name)}"
        for f in dataclasses.fields(settings)
        if f.name in inverse and getattr(settings, f.name) is not None
    ]
    return ";".join(items) or ENABLED
