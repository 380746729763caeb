"""``keys list``'s table: status words, versions that do not read like tags, ISO-8601 times."""

from __future__ import annotations

from typing import Any

from layerseal.cli.keys import iso_time, key_rows, key_status, key_table, version_summary


def key(versions: list[tuple[int, str]], **flags: Any) -> dict[str, Any]:
    return {
        "key_id": "kaaaa",
        "repository": "team/app",
        "layer_digest": "sha256:" + "ab" * 32,
        "created_at": 1764478109.25,
        "versions": [{"version": v, "status": s, "created_at": 0.0} for v, s in versions],
        **flags,
    }


def test_status_words() -> None:
    assert key_status(key([(1, "retired"), (2, "active")])) == "active"
    assert key_status(key([(1, "retired"), (2, "retired")])) == "retired"
    assert key_status(key([(1, "active")], revoked=True)) == "revoked"
    assert key_status(key([(1, "active")], unused=True)) == "unused"


def test_versions_newest_first_with_their_status() -> None:
    assert version_summary(key([(1, "retired"), (3, "revoked"), (2, "active")])) == (
        "#3 revoked, #2 active, #1 retired"
    )


def test_times_are_iso_8601_utc_and_absent_ones_a_dash() -> None:
    assert iso_time(1764478109.25) == "2025-11-30T04:48:29Z"
    assert iso_time(None) == "-" and iso_time(True) == "-"


def test_table_has_a_header_and_aligned_columns() -> None:
    lines = key_table([key([(1, "active")]), key([(1, "retired"), (2, "retired")], key_id="kbbbbbbbbbb")])
    assert lines[0].startswith("KEY ID")
    status_col = lines[0].index("STATUS")
    assert [line[status_col:].split()[0] for line in lines[1:]] == ["active", "retired"]


def test_json_rows_keep_the_broker_fields_and_add_status_and_created() -> None:
    (row,) = key_rows([key([(1, "active")])])
    assert row["created_at"] == 1764478109.25 and row["created"] == "2025-11-30T04:48:29Z"
    assert row["status"] == "active"
