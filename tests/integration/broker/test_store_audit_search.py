"""The audit search's filters run in SQL (``Store.iter_audit``) on SQLite and PostgreSQL and
select exactly the rows the former in-Python filter selected; the console's timeline the same."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from layerseal.broker import audit, database
from layerseal.broker.console import queries
from layerseal.broker.store import Store, keys_json

pytestmark = pytest.mark.integration

KA = "k" + "a" * 26
KB = "k" + "b" * 26
KC = "k" + "a" * 25 + "c"  # KA but its last character
PATHS = [
    [f"acme/{KA}.1"],
    [f"acme/{KA}"],
    [f"acme/{KB}.2", f"acme/{KA}.3"],
    [f"globex/{KC}.1"],
    [f"globex/{KB}"],
    [],
]


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = database.create_db_engine(db_url)
    database.migrate(engine)
    s = Store(engine)
    keys = audit.AuditKeys(b"\x01" * 32)
    chain = s.claim_audit_chain("test", keys, 60.0)
    entries = []
    for i, (paths, decision, action) in enumerate(
        itertools.product(PATHS, ["ok", "deny"], ["release", "key-create", "token-create"])
    ):
        tenant = paths[0].split("/")[0] if paths else None
        entries.append(
            {
                "at_ms": 1000 * i,
                "actor": "a",
                "action": action,
                "decision": decision,
                "tenant": tenant,
                "keys": keys_json(paths),
                "evidence_digest": None,
                "measurement": None,
                "reason": "",
            }
        )
    assert isinstance(s.append_audit_batch(entries, chain=chain, owner="test", keys=keys, lease=60.0), list)
    try:
        yield s
    finally:
        s.dispose()


def _python_filter(entry: dict[str, Any], f: dict[str, Any]) -> bool:
    """The search's former filter, applied to each row in Python."""
    if f.get("tenant") is not None and entry["tenant"] != f["tenant"]:
        return False
    if f.get("decision") is not None and entry["decision"] != f["decision"]:
        return False
    if f.get("action") is not None and entry["action"] != f["action"]:
        return False
    at = int(entry["at_ms"] or 0)
    if f.get("since_ms") is not None and at < f["since_ms"]:
        return False
    if f.get("until_ms") is not None and at >= f["until_ms"]:
        return False
    if f.get("key_ids") is None:
        return True
    named = {p.split("/", 1)[-1].split(".", 1)[0] for p in json.loads(entry["keys"])}
    return bool(named & set(f["key_ids"]))


FILTERS: list[dict[str, Any]] = [
    {},
    {"tenant": "acme"},
    {"tenant": "globex", "decision": "deny"},
    {"action": "release", "decision": "ok"},
    {"since_ms": 5000, "until_ms": 20000},
    {"until_ms": 0},
    {"key_ids": [KA]},
    {"key_ids": [KB], "tenant": "globex"},
    {"key_ids": [KA, KC], "action": "release"},
    {"key_ids": []},
    {"key_ids": [KA[:-1]]},  # a prefix of an id names no key
    {"key_ids": ["k" + "_" * 26]},  # LIKE wildcards are taken literally
    {"key_ids": ["k%"]},
    {"key_ids": [f"{KA}.1"]},  # a version is no key id
    {"key_ids": [f"acme/{KA}"]},
    {"key_ids": [""]},
]


@pytest.mark.parametrize("f", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_sql_filters_select_what_the_python_filter_selected(store: Store, f: dict[str, Any]) -> None:
    every = list(store.iter_audit())
    expected = [r.id for r in every if _python_filter(r.content, f)]
    assert [r.id for r in store.iter_audit(**f)] == expected
    # paging: ``after`` and ``limit`` apply to the matching rows, in id order
    if len(expected) > 2:
        assert [r.id for r in store.iter_audit(after=expected[0], limit=2, **f)] == expected[1:3]


def test_many_key_ids_in_one_search(store: Store) -> None:
    # a repository filter can name thousands of keys: no per-key SQL expression
    others = [f"k{i:026d}" for i in range(5000)]
    found = [r.content["keys"] for r in store.iter_audit(key_ids=[*others, KC])]
    assert found and all(KC in keys for keys in found)
    assert list(store.iter_audit(key_ids=others)) == []


@pytest.mark.parametrize("f", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_console_timeline_selects_what_the_admin_search_selects(store: Store, f: dict[str, Any]) -> None:
    # the console's filter is the store's: the same rows, newest first
    wanted = queries.AuditFilter(
        tenant=f.get("tenant"),
        key_ids=None if f.get("key_ids") is None else tuple(f["key_ids"]),
        outcome=f.get("decision"),
        action=f.get("action"),
        since_ms=f.get("since_ms"),
        until_ms=f.get("until_ms"),
    )
    admin = [r.id for r in store.iter_audit(**f)]
    console = [r.position for r in queries.search_audit(store.engine, wanted, queries.MAX_PAGE)]
    assert console == admin[::-1]


def test_a_key_filter_names_that_key_only(db_url: str) -> None:
    # "k1" is a prefix of "k10": neither search may return the rows of k10 for k1
    engine = database.create_db_engine(db_url)
    database.migrate(engine)
    s = Store(engine)
    keys = audit.AuditKeys(b"\x02" * 32)
    chain = s.claim_audit_chain("test", keys, 60.0)
    entries = [
        {
            "at_ms": i,
            "actor": "a",
            "action": "release",
            "decision": "ok",
            "tenant": "acme",
            "keys": keys_json(paths),
            "evidence_digest": None,
            "measurement": None,
            "reason": "",
        }
        for i, paths in enumerate([["acme/k1.1"], ["acme/k10.1"], ["acme/k10"], ["acme/k1"]])
    ]
    s.append_audit_batch(entries, chain=chain, owner="test", keys=keys, lease=60.0)
    try:
        admin = [r.content["keys"] for r in s.iter_audit(key_ids=["k1"])]
        timeline = queries.search_audit(engine, queries.AuditFilter(key_ids=("k1",)), 100)
        assert admin == ['["acme/k1.1"]', '["acme/k1"]']
        assert [r.content["keys"] for r in timeline] == admin[::-1]
        ten = queries.search_audit(engine, queries.AuditFilter(key_ids=("k10",)), 100)
        assert [r.content["keys"] for r in ten] == ['["acme/k10"]', '["acme/k10.1"]']
    finally:
        s.dispose()
