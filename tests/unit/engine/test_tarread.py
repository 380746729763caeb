"""Tests for layerseal.engine.tarread: its header parser reads every block as tarfile does."""

from __future__ import annotations

import tarfile
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from layerseal.engine.tarread import CheckedTarInfo

FIELDS = (
    "name",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime",
    "chksum",
    "type",
    "linkname",
    "uname",
    "gname",
    "devmajor",
    "devminor",
)
ENC = ("utf-8", "surrogateescape")


def parsed(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[Any, ...]:
    try:
        ti = cls.frombuf(buf, *ENC)
    except tarfile.HeaderError as e:
        return (type(e), str(e))
    return tuple(getattr(ti, f) for f in FIELDS)


def with_checksum(buf: bytearray, signed: bool = False) -> bytes:
    buf[148:156] = b" " * 8
    total = sum((b - 256 if signed and b >= 0x80 else b) for b in buf)
    buf[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(buf)


def header(
    name: str, kind: bytes, size: int, mtime: int, uid: int, fmt: int, linkname: str = ""
) -> bytearray:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    ti.mtime = mtime
    ti.uid = ti.gid = uid
    ti.linkname = linkname
    ti.uname = "user"
    return bytearray(ti.tobuf(fmt, *ENC)[-tarfile.BLOCKSIZE :])


names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=60)
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)


@settings(max_examples=300, deadline=None)
@given(
    name=names,
    kind=kinds,
    size=st.integers(0, 8**11 - 1) | st.integers(8**11, 2**60),
    mtime=st.integers(0, 8**11 - 1) | st.integers(-(2**40), -1),
    uid=st.integers(0, 8**7 - 1),
    gnu=st.booleans(),
    signed=st.booleans(),
)
def test_valid_headers_parse_as_tarfile_parses_them(
    name: str, kind: bytes, size: int, mtime: int, uid: int, gnu: bool, signed: bool
) -> None:
    try:
        buf = header(name, kind, size, mtime, uid, tarfile.GNU_FORMAT if gnu else tarfile.USTAR_FORMAT)
    except ValueError:  # a ustar header cannot hold this: nothing to compare
        return
    buf = with_checksum(buf, signed)
    assert parsed(CheckedTarInfo, buf) == parsed(tarfile.TarInfo, buf)


@settings(max_examples=500, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1, max_size=12),
    fix=st.booleans(),
    signed=st.booleans(),
)
@example(edits=[(124, 0o200)], fix=True, signed=False)  # base-256 size
@example(edits=[(124, 0o377)], fix=True, signed=False)  # negative base-256
@example(edits=[(100, ord("9"))], fix=True, signed=False)  # not octal
@example(edits=[(101, ord(" ")), (102, 0x1C)], fix=True, signed=False)  # odd whitespace
@example(edits=[(149, 0xE9)], fix=False, signed=False)  # non-ASCII checksum
@example(edits=[(10, 0xFF), (400, 0x80)], fix=True, signed=True)  # signed checksum
@example(edits=[(156, 0)], fix=True, signed=False)  # AREGTYPE
@example(edits=[(345, ord("p"))], fix=True, signed=False)  # ustar prefix
def test_altered_headers_parse_or_fail_as_tarfile(
    edits: list[tuple[int, int]], fix: bool, signed: bool
) -> None:
    buf = header("usr/share/doc/file.txt", tarfile.REGTYPE, 1234, 1_700_000_000, 0, tarfile.USTAR_FORMAT)
    for pos, value in edits:
        buf[pos] = value
    data = with_checksum(buf, signed) if fix else bytes(buf)
    assert parsed(CheckedTarInfo, data) == parsed(tarfile.TarInfo, data)


def test_end_and_short_blocks_fail_as_tarfile() -> None:
    for data in (b"", b"\0" * 100, b"\0" * 512, b"x" * 512):
        assert parsed(CheckedTarInfo, data) == parsed(tarfile.TarInfo, data)
