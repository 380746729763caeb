"""The KBS protocol's fixed names (pure, imports nothing): version, session cookie, endpoint paths.

Defined once for the broker (server), the engine's and builder's httpx client and the
keyprovider's ``http.client`` one.
"""

from __future__ import annotations

#: the KBS protocol version layerseal speaks (kbs-types ``Request.version``)
PROTOCOL_VERSION = "0.4.0"
#: the cookie carrying an RCAR session between ``/auth`` and ``/attest``
SESSION_COOKIE = "kbs-session-id"

AUTH_PATH = "/kbs/v0/auth"
ATTEST_PATH = "/kbs/v0/attest"
#: layerseal's batch release endpoint (absent on a Trustee KBS)
BATCH_PATH = "/kbs/v0/resources"
#: the plain per-resource endpoint every KBS has: ``RESOURCE_PREFIX + "<repo>/<type>/<tag>"``
RESOURCE_PREFIX = "/kbs/v0/resource/"
KEYS_PATH = "/api/v1/keys"
