"""Verified claims and the verifier interface every TEE kind implements.

Claims are a small JSON-like tree: common top-level facts every policy can rely on
(``tee``, ``debug``, ``measurement``, ``svn``) plus a namespace per TEE kind (``sim.*``)
holding the kind-specific fields.  Two optional branches exist only when verified:
``init_data.*`` (the CoCo init-data whose digest the TEE's field holds) and
``additional.<tee>.*`` (the claims tree of each verified piece of additional evidence).
Verifiers are pure: no clock, no files, no network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from layerseal.errors import BadInputError

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Claims:
    """What a verifier vouches for after checking the evidence."""

    tee: str
    measurement: str
    svn: int
    debug: bool
    details: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    init_data: Mapping[str, Any] | None = None
    additional: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not self.tee or not self.tee.replace("-", "").isalnum():
            raise BadInputError(f"claims tee: expected a TEE name like 'sim', seen {self.tee!r}")
        if isinstance(self.svn, bool) or not isinstance(self.svn, int) or self.svn < 0:
            raise BadInputError(f"claims svn: expected a non-negative integer, seen {self.svn!r}")

    def as_tree(self) -> dict[str, Any]:
        """The claims as policies see them: common facts plus ``<tee>.*``."""
        tree: dict[str, Any] = {
            "tee": self.tee,
            "measurement": self.measurement,
            "svn": self.svn,
            "debug": self.debug,
            self.tee: dict(self.details),
        }
        if self.init_data is not None:
            tree["init_data"] = dict(self.init_data)
        if self.additional:
            tree["additional"] = {tee: dict(sub) for tee, sub in self.additional.items()}
        return tree

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any]) -> Claims:
        try:
            tee = str(tree["tee"])
            details = tree.get(tee, {})
            init_data = tree.get("init_data")
            additional = tree.get("additional", {})
            return cls(
                tee=tee,
                measurement=str(tree["measurement"]),
                svn=int(tree["svn"]),
                debug=bool(tree["debug"]),
                details=MappingProxyType(dict(details)),
                init_data=MappingProxyType(dict(init_data)) if init_data is not None else None,
                additional=MappingProxyType(
                    {str(k): MappingProxyType(dict(v)) for k, v in additional.items()}
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"claims: expected tee/measurement/svn/debug, seen {sorted(tree)}") from exc

    def digest(self) -> str:
        """A stable fingerprint of the claims (cache keys, audit)."""
        text = json.dumps(self.as_tree(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class Verifier(Protocol):
    """Checks one TEE kind's evidence; raises ``DeniedError`` when it does not verify."""

    @property
    def tee(self) -> str: ...

    def verify(self, evidence: bytes, expected_report_data: bytes) -> Claims: ...


class Attester(Protocol):
    """Produces evidence of the enclave it runs in, carrying *report_data* (64 bytes)."""

    @property
    def tee(self) -> str: ...

    def evidence(self, report_data: bytes) -> dict[str, Any]: ...
