"""A backup file is input: a line that is no JSON object, a row of another shape or a binary
column that is no base64 is refused before anything is written, naming its line, table and
field (``BadInputError``); the sha256 trailer still catches edits that stay well-formed."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from layerseal.broker.backup import FORMAT, VERSION, backup_master_key, restore
from layerseal.errors import BadInputError, IntegrityError

KEY = base64.b64encode(b"\x07" * 32).decode()


def write_backup(path: Path, lines: list[bytes], master_key: str = KEY) -> Path:
    """*lines* (rows) between a valid header and a trailer whose sha256 matches them."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "revision": "0001",
        "created_at": 0.0,
        "source": "sqlite",
        "tables": ["secrets"],
        "master_key": {"kind": "file", "key": master_key},
    }
    body = [json.dumps(header).encode() + b"\n", *(line + b"\n" for line in lines)]
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    trailer = json.dumps({"end": True, "rows": {"secrets": len(lines)}, "sha256": digest}).encode()
    path.write_bytes(gzip.compress(b"".join(body) + trailer + b"\n"))
    return path


def secret_row(sealed: object) -> bytes:
    return json.dumps({"t": "secrets", "r": {"name": "n", "sealed": sealed, "created_at": 0.0}}).encode()


def refused(path: Path) -> str:
    with pytest.raises(BadInputError) as info:
        restore(str(path.parent / "never.db"), path, key_file=path.parent / "k", custody=None)
    assert not (path.parent / "never.db").exists() and not (path.parent / "k").exists()
    return str(info.value)


@pytest.mark.parametrize(
    ("sealed", "seen"),
    [
        ("not base64!", "expected standard base64, seen invalid base64"),
        ("QUJD\nRA==", "expected standard base64, seen invalid base64"),  # no characters skipped
        (12, "expected a base64 string, seen int"),
    ],
)
def test_a_binary_column_that_is_no_base64_names_line_table_and_field(
    tmp_path: Path, sealed: object, seen: str
) -> None:
    path = write_backup(
        tmp_path / "b.backup", [secret_row(base64.b64encode(b"ok").decode()), secret_row(sealed)]
    )
    assert refused(path) == f"backup {path} line 3: table secrets field 'sealed': {seen}"


@pytest.mark.parametrize(
    ("line", "seen"),
    [
        (b'{"t":"secrets","r":{', "line 2: expected JSON, seen invalid JSON"),
        (b"[1,2]", "line 2: expected a JSON object, seen list"),
        (b'{"t":"secrets","r":[1]}', "line 2: expected a row {t: table, r: {column: value}}, seen"),
        (b'{"r":{}}', "line 2: expected a row {t: table, r: {column: value}}, seen {'r': 'dict'}"),
    ],
)
def test_a_line_that_is_no_row_object_is_named(tmp_path: Path, line: bytes, seen: str) -> None:
    path = write_backup(tmp_path / "b.backup", [line])
    assert refused(path).startswith(f"backup {path} {seen}")


def test_the_master_key_must_be_base64_of_32_bytes(tmp_path: Path) -> None:
    path = write_backup(tmp_path / "good.backup", [])
    assert backup_master_key(path) == b"\x07" * 32
    path = write_backup(tmp_path / "b.backup", [], master_key="%%%")
    with pytest.raises(BadInputError, match=r"header field 'master_key.key': expected base64 of 32 bytes"):
        backup_master_key(path)
    path = write_backup(tmp_path / "short.backup", [], master_key=base64.b64encode(b"x" * 16).decode())
    assert "master_key.key': expected 32 bytes, seen 16" in refused(path)


def test_well_formed_edits_still_fail_the_sha256(tmp_path: Path) -> None:
    path = write_backup(tmp_path / "b.backup", [secret_row("QUJD")])
    lines = gzip.decompress(path.read_bytes()).splitlines()
    lines[1] = lines[1].replace(b"QUJD", b"QUJE")
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    with pytest.raises(IntegrityError, match="expected sha256"):
        backup_master_key(path)
