"""How a KBS client reads what a broker or a Trustee KBS says, whatever its HTTP library (pure).

Read by the one KBS client (:mod:`layerseal.kbs.rcarclient`), whatever its transport: which kids
name layerseal layer keys (those go in one batch) and which are plain KBS resources
(``GET /kbs/v0/resource/<repo>/<type>/<tag>``); whether an answer to the batch request
means the KBS has no such endpoint (Trustee: 404 ``PluginNotFound``); which report-data
hash the challenge selects; and the batch answer's KEKs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from layerseal.attest.binding import HASH_ALGORITHMS
from layerseal.errors import BadInputError, TransportError
from layerseal.kbs.packets import ResourcePath
from layerseal.kbs.problems import PROBLEM_TYPE
from layerseal.wire.b64 import b64decode
from layerseal.wire.jsonload import loads_object, object_or_none

DEFAULT_HASH = "sha384"

_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


def resource_path_of(kid: str) -> str:
    """The KBS resource path ``<repo>/<type>/<tag>`` a kid (``kbs://[host]/...``) or path names."""
    try:
        return str(ResourcePath.parse(kid))
    except BadInputError:
        pass
    path = kid.partition("?")[0]  # a ResourceUri may carry a query; the KBS path does not
    if path.startswith("kbs://"):
        path = path[len("kbs://") :].partition("/")[2]  # the host part is ignored
    parts = path.split("/")
    if len(parts) != 3 or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
        raise BadInputError(
            "resource path: expected 'kbs:///<repo>/<type>/<tag>' or '<repo>/<type>/<tag>', "
            f"seen {kid[:120]!r}"
        )
    return path


def is_layer_key(path: str) -> bool:
    """Whether *path* names a layerseal layer key (fetched in batches) rather than any resource."""
    try:
        ResourcePath.parse(path)
    except BadInputError:
        return False
    return True


def batch_absent(status: int, body: bytes) -> bool:
    """An answer to the batch request from a KBS without the endpoint (Trustee: 404 PluginNotFound)."""
    if status not in (404, 405, 501):
        return False
    doc = object_or_none(body)
    # layerseal's own 404 names an unknown key: that is an answer, not a missing endpoint
    return not (doc is not None and str(doc.get("type", "")).startswith(PROBLEM_TYPE))


def selected_hash_algorithm(challenge: Any, what: str = "broker /kbs/v0/auth") -> str:
    """The report-data hash a challenge's ``extra-params`` selects (kbs-types), SHA-384 by default."""
    extra = challenge.get("extra-params") if isinstance(challenge, dict) else None
    selected = extra.get("selected-hash-algorithm") if isinstance(extra, dict) else None
    if selected is None:
        return DEFAULT_HASH
    if isinstance(selected, str) and selected.lower() in HASH_ALGORITHMS:
        return selected.lower()
    raise TransportError(
        f"{what}: expected selected-hash-algorithm among {list(HASH_ALGORITHMS)}, seen {str(selected)[:20]!r}"
    )


def released_keks(plain: bytes, paths: Sequence[str]) -> dict[str, bytes]:
    """The KEKs of a batch answer's plaintext ``{"resources": {path: base64}}``; every path required."""
    try:
        released = loads_object(plain, "broker batch response")["resources"]
        keks = {path: b64decode(value, f"broker batch response {path}") for path, value in released.items()}
    except (ValueError, KeyError, TypeError, AttributeError, BadInputError) as exc:
        raise TransportError(
            "broker batch response: expected {resources:{path:b64}}, seen another payload"
        ) from exc
    missing = [p for p in paths if p not in keks]
    if missing:
        raise TransportError(
            f"broker batch response: expected every requested key, seen {len(missing)} missing"
        )
    return keks
