"""Reading a layer's (decompressed) tar stream: hashing, bounded header parsing, member data.

This is the only module that relies on ``tarfile`` internals; extraction and stacking see
``TarInfo`` objects, :func:`member_data` and :func:`stored_data` only.  Stream mode
(``"r|"``) parses headers; the hooks below bound what it buffers and make it accept what
Go's archive/tar (so umoci) accepts.  What is relied on, as in CPython 3.11-3.13:

- ``TarInfo._proc_member``, ``_proc_builtin``, ``_proc_sparse``, ``_proc_gnusparse_00``,
  ``_proc_gnusparse_01``, ``_proc_gnusparse_10`` and ``_apply_pax_info``, the per-type
  steps of ``TarInfo.fromtarfile``: overridden to cap pax/long-name headers and sparse maps
  before tarfile reads them whole, to record the stored size of sparse members, and to
  ignore empty PAX records;
- ``TarInfo.frombuf`` (documented) is replaced whole: the same fields and errors at a
  third of the cost (tarfile's checksum alone was a fifth of the header parsing), and the
  old GNU sparse map bounded; it hands ``_proc_sparse`` the map as ``_sparse_structs``,
  and that step uses ``TarInfo._block``;
- ``EOFHeaderError``, ``EmptyHeaderError``, ``TruncatedHeaderError``,
  ``InvalidHeaderError``: undocumented module names, raised as tarfile does and used to
  tell a clean end from a truncated one, since ``TarFile.next()`` ends silently on both;
- ``tarfile._Stream`` with its ``fileobj``, ``buf``, ``pos`` and ``comptype``, and
  ``TarFile.members``: member data is read straight from :class:`HashingReader` without
  tarfile's copies, and the headers already seen are dropped (stream mode keeps them all).

The hooks are checked at import, so a Python that renames one fails loudly instead of
silently skipping a bound; :func:`member_data` falls back to ``extractfile`` when the
stream is not the one it knows.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tarfile
import zlib
from collections.abc import Generator, Iterator
from typing import IO, Any, Self, cast

from layerseal.engine.limits import LayerBudget
from layerseal.errors import BadInputError, LayersealError, expected_seen
from layerseal.image.digest import Digest
from layerseal.streams import Background

_HOOKS = (
    "_proc_member",
    "_proc_builtin",
    "_proc_sparse",
    "_proc_gnusparse_00",
    "_proc_gnusparse_01",
    "_proc_gnusparse_10",
    "_apply_pax_info",
    "_block",
)
_NAMES = ("EOFHeaderError", "EmptyHeaderError", "TruncatedHeaderError", "InvalidHeaderError")
_missing = [h for h in _HOOKS if not callable(getattr(tarfile.TarInfo, h, None))]
_missing += [n for n in _NAMES if not hasattr(tarfile, n)]
if _missing:  # pragma: no cover - only on a Python whose tarfile changed
    raise LayersealError(f"this Python's tarfile lacks {', '.join(_missing)}, needed by the layer tar checks")

# the clean ends of an archive: an all-zero header block, or the end of the data exactly
# where a header would start (no end-of-archive blocks: Go's archive/tar and umoci accept
# that; tarfile.next() has already checked that the last member's data and padding are whole)
_CLEAN_ENDS: tuple[type[Exception], ...] = (
    cast(Any, tarfile).EOFHeaderError,
    cast(Any, tarfile).EmptyHeaderError,
)

#: a sparse map is held in memory while its file is written: bound it
MAX_SPARSE_REGIONS = 1 << 16
READ_CHUNK = 256 * 1024


class HashingReader:
    """A ``read(n)`` view of the decompressed chunk iterator that hashes every byte.

    Each chunk is hashed whole as it arrives, on a helper thread (hashlib releases the
    GIL), while this thread parses and writes it; the digest is read only after
    :meth:`drain` consumed the stream, so it covers exactly the bytes read.  Reads hand
    out memoryviews of the (immutable) chunks: no copy until a consumer needs one.
    """

    def __init__(self, chunks: Iterator[bytes], budget: LayerBudget) -> None:
        self._it = chunks
        self._buf = memoryview(b"")
        self._h = hashlib.sha256()
        self._hash_bg = Background(self._h.update)
        self._budget = budget
        self.size = 0

    def _fill(self) -> bool:
        while not self._buf:
            chunk = next(self._it, None)
            if chunk is None:
                return False
            # charged as it arrives, before any of it can be written
            self._budget.charge_bytes(len(chunk))
            self._hash_bg.update(chunk)
            self._buf = memoryview(chunk)
        return True

    def read(self, n: int = -1) -> memoryview:
        if not self._fill():
            return memoryview(b"")
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, memoryview(b"")
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        self.size += len(out)
        return out

    def drain(self) -> None:
        # the diff_id covers the whole stream, including what follows the end-of-archive blocks
        while self.read(READ_CHUNK):
            pass

    def digest(self) -> Digest:
        self._hash_bg.wait()
        return Digest("sha256", self._h.hexdigest())


_TAR_STREAM: Any = getattr(tarfile, "_Stream", None)


def member_data(tf: tarfile.TarFile, ti: tarfile.TarInfo, size: int) -> Iterator[bytes | memoryview]:
    """The *size* data bytes of the member whose header ``tf.next()`` just returned.

    Read straight from the layer's :class:`HashingReader` as memoryviews, which
    ``os.write`` takes without a copy, instead of through ``extractfile`` (three copies
    per byte: the stream's join, the file object's buffer, the result).  The tar stream's
    read-ahead is consumed first and its position advanced as tarfile would, so its next
    header read finds the member's padding, as after ``extractfile``.  Falls back to
    ``extractfile`` when the stream is not the plain one this relies on.  Yields fewer
    than *size* bytes only when the data ends early.
    """
    stream: Any = tf.fileobj
    reader = getattr(stream, "fileobj", None)
    if (
        _TAR_STREAM is None
        or type(stream) is not _TAR_STREAM
        or getattr(stream, "comptype", None) != "tar"
        or not isinstance(reader, HashingReader)
        or not isinstance(getattr(stream, "buf", None), bytes)
        or getattr(stream, "pos", None) != ti.offset_data
    ):
        src = tf.extractfile(ti)
        left = size
        while left and src is not None and (chunk := src.read(min(left, READ_CHUNK))):
            left -= len(chunk)
            yield chunk
        return
    left = size
    if stream.buf:
        head = stream.buf[:left]
        stream.buf = stream.buf[len(head) :]
        stream.pos += len(head)
        left -= len(head)
        yield head
    while left:
        view = reader.read(min(left, READ_CHUNK))
        if not view:
            return
        stream.pos += len(view)
        left -= len(view)
        yield view


class HeaderRefused(Exception):
    """A tar header refused before tarfile finished parsing it (wrapped with the layer name)."""

    def __init__(self, offset: int, rule: str, expected: str, seen: str) -> None:
        super().__init__(f"tar header at offset {offset} refused ({rule}): expected {expected}, seen {seen}")


_META_TYPES = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}
#: tarfile reads pax / long-name headers wholly into memory: bound them
MAX_META_SIZE = 1 << 20
MAX_GLOBAL_PAX_KEYS = 1024


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_TarErrors: Any = tarfile  # the undocumented header errors, checked at import


def _num(field: bytes | bytearray) -> int:
    """A header number: octal text up to a NUL, or GNU base-256 (first byte 0o200, or
    0o377 for a negative number), read as ``tarfile.nti`` reads it."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    end = field.find(0)
    try:
        return int(field[: end if end >= 0 else len(field)].decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _TarErrors.InvalidHeaderError("invalid header") from None


def _text(field: bytes | bytearray, encoding: str, errors: str) -> str:
    end = field.find(0)
    return (field[:end] if end >= 0 else field).decode(encoding, errors)


def _checksum_ok(buf: bytes | bytearray, chksum: int) -> bool:
    """Whether ``chksum`` is the sum of the header's bytes, the checksum field counted as
    eight spaces: as unsigned bytes, or as signed ones (old Sun and NeXT tars).

    tarfile unpacks all 512 bytes into two tuples to sum them (its ``calc_chksums`` was a
    fifth of the parsing time); adler32's low half is 1 + the byte sum modulo 65521, exact
    for each 256-byte half (at most 65280), and runs in C without creating objects.
    """
    head, tail = memoryview(buf)[:256], memoryview(buf)[256:]
    field = sum(buf[148:156])
    unsigned = (zlib.adler32(head) & 0xFFFF) + (zlib.adler32(tail) & 0xFFFF) - 2 - field + 256
    if chksum == unsigned:
        return True
    # a signed sum counts each byte of 0x80 or more 256 lower
    high = sum(1 for b in buf if b >= 0x80) - sum(1 for b in buf[148:156] if b >= 0x80)
    return chksum == unsigned - 256 * high


def _old_gnu_sparse_entries(buf: bytes | bytearray, pos: int, count: int) -> list[tuple[int, int]]:
    """The (offset, length) entries of an old GNU sparse block, up to the first empty one."""
    out = []
    for _ in range(count):
        if buf[pos] == 0:  # where GNU tar, BSD tar and Go stop reading entries
            break
        out.append((_num(buf[pos : pos + 12]), _num(buf[pos + 12 : pos + 24])))
        pos += 24
    return out


class CheckedTarInfo(tarfile.TarInfo):
    """Bounds what tarfile buffers while parsing headers, and records why parsing stopped.

    tarfile ends an archive silently on a truncated or garbage header; only an all-zero
    block (EOFHeaderError) or the end of data exactly at a header boundary is a clean end,
    which unpack_layer checks afterwards.  Sparse maps are parsed here with a bound on
    their length (tarfile's own loops read them whole, and 1.0 maps without end); each
    sparse entry records ``layerseal_stored``, the bytes of data the archive holds for it.
    PAX records with an empty value are ignored, as Go's archive/tar (umoci) does.
    """

    layerseal_stored: int

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            setattr(tf, "_layerseal_end", e)  # noqa: B010
            raise

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        """Parse one header block as ``TarInfo.frombuf`` does (same fields, same errors),
        at a third of its cost; the old GNU sparse map is bounded (see :meth:`_proc_sparse`)."""
        if len(buf) == 0:
            raise _TarErrors.EmptyHeaderError("empty header")
        if len(buf) != tarfile.BLOCKSIZE:
            raise _TarErrors.TruncatedHeaderError("truncated header")
        if buf == _ZERO_BLOCK:
            raise _TarErrors.EOFHeaderError("end of file header")
        chksum = _num(buf[148:156])
        if not _checksum_ok(buf, chksum):
            raise _TarErrors.InvalidHeaderError("bad checksum")
        obj = cls()
        obj.name = _text(buf[0:100], encoding, errors)
        obj.mode = _num(buf[100:108])
        obj.uid = _num(buf[108:116])
        obj.gid = _num(buf[116:124])
        obj.size = _num(buf[124:136])
        obj.mtime = _num(buf[136:148])
        obj.chksum = chksum
        obj.type = bytes(buf[156:157])
        obj.linkname = _text(buf[157:257], encoding, errors)
        obj.uname = _text(buf[265:297], encoding, errors)
        obj.gname = _text(buf[297:329], encoding, errors)
        obj.devmajor = _num(buf[329:337])
        obj.devminor = _num(buf[337:345])
        prefix = _text(buf[345:500], encoding, errors)
        if obj.type == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # old V7 tars mark a directory by its trailing slash
        if obj.type == tarfile.GNUTYPE_SPARSE:
            for pos in range(386, 482, 12):
                _num(buf[pos : pos + 12])  # tarfile refuses a bad number in any of the 4 entries
            entries = _old_gnu_sparse_entries(buf, 386, 4)
            setattr(obj, "_sparse_structs", (entries, bool(buf[482]), _num(buf[483:495])))  # noqa: B010
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        if prefix and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix + "/" + obj.name  # a ustar name split in two
        return obj

    def _proc_member(self, tf: tarfile.TarFile) -> Self:
        if self.type in _META_TYPES and self.size > MAX_META_SIZE:
            raise HeaderRefused(
                self.offset, "metadata header size", f"at most {MAX_META_SIZE} bytes", f"{self.size} bytes"
            )
        result: Self = super()._proc_member(tf)  # type: ignore[misc]
        if len(tf.pax_headers) > MAX_GLOBAL_PAX_KEYS:
            raise HeaderRefused(
                self.offset,
                "global pax headers",
                f"at most {MAX_GLOBAL_PAX_KEYS} keys",
                f"{len(tf.pax_headers)}",
            )
        return result

    def _proc_builtin(self, tf: tarfile.TarFile) -> Self:
        self.layerseal_stored = self.size
        result: Self = super()._proc_builtin(tf)  # type: ignore[misc]
        return result

    def _proc_sparse(self, tf: tarfile.TarFile) -> Self:
        entries, extended, realsize = getattr(self, "_sparse_structs")  # noqa: B009
        del self._sparse_structs  # type: ignore[attr-defined]
        while extended:
            self._check_regions(len(entries))
            buf = cast(Any, tf.fileobj).read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise cast(Any, tarfile).TruncatedHeaderError("truncated old GNU sparse header")
            entries += _old_gnu_sparse_entries(buf, 0, 21)
            extended = bool(buf[504])
        self._check_regions(len(entries))
        cast(Any, self).sparse = entries
        self.layerseal_stored = self.size
        self.offset_data = cast(Any, tf.fileobj).tell()
        tf.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = realsize
        return self

    def _check_regions(self, n: int) -> None:
        if n > MAX_SPARSE_REGIONS:
            raise HeaderRefused(
                self.offset, "sparse map size", f"at most {MAX_SPARSE_REGIONS} regions", f"{n} or more"
            )

    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *args: Any) -> None:
        # 3.11 passes (pax_headers, raw buffer), later versions the list of raw records
        raw = args[-1]
        n = raw.count(b" GNU.sparse.offset=") if isinstance(raw, bytes | bytearray) else len(raw) // 2
        self._check_regions(n)
        super()._proc_gnusparse_00(next, *args)  # type: ignore[misc]

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, pax_headers: dict[str, str]) -> None:
        self._check_regions(pax_headers["GNU.sparse.map"].count(",") // 2)
        try:
            super()._proc_gnusparse_01(next, pax_headers)  # type: ignore[misc]
        except ValueError:
            raise HeaderRefused(
                self.offset,
                "sparse map",
                "comma-separated numbers",
                repr(pax_headers["GNU.sparse.map"][:100]),
            ) from None

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        # the map heads the entry's data: a count, then offset and length per region, one
        # decimal number a line, padded to whole blocks
        fileobj = cast(Any, tf.fileobj)
        start = fileobj.tell()
        buf = b""
        count: int | None = None
        values: list[int] = []
        while count is None or len(values) < 2 * count:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > 20:
                    raise HeaderRefused(self.offset, "sparse map", "decimal numbers", repr(buf[:40]))
                more = fileobj.read(tarfile.BLOCKSIZE)
                if not more:
                    raise HeaderRefused(self.offset, "sparse map", "a complete map", "the end of data")
                buf += more
                continue
            field, buf = buf[:nl], buf[nl + 1 :]
            if not field.isdigit() or len(field) > 20:
                raise HeaderRefused(self.offset, "sparse map", "decimal numbers", repr(field[:40]))
            if count is None:
                count = int(field)
                self._check_regions(count)
            else:
                values.append(int(field))
        next.offset_data = fileobj.tell()
        stored = cast(CheckedTarInfo, next).layerseal_stored - (next.offset_data - start)
        cast(CheckedTarInfo, next).layerseal_stored = stored
        cast(Any, next).sparse = list(zip(values[::2], values[1::2], strict=True))

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        # Go's archive/tar keeps the ustar value when a record is empty (and so drops
        # empty-valued xattrs): do the same, so that trees match umoci's
        kept = {k: v for k, v in pax_headers.items() if v != ""}
        super()._apply_pax_info(kept, encoding, errors)  # type: ignore[misc]


class BadTime(ValueError):
    """A PAX mtime that is not ``seconds[.fraction]`` (Go's archive/tar refuses it too)."""


_PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.([0-9]*))?", re.ASCII)


def mtime_ns(ti: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, exact: tarfile turns a PAX mtime into a float, which
    drifts by up to ~256 ns today, so the record itself is parsed (as Go's archive/tar
    does: at most 9 fraction digits, truncated; a negative time counts down)."""
    text = ti.pax_headers.get("mtime")
    if text is None:
        return int(ti.mtime) * 1_000_000_000
    m = _PAX_TIME.fullmatch(text)
    if m is None or len(m.group(1)) > 12:
        raise BadTime(text)
    secs = m.group(1)
    ns = int(((m.group(2) or "") + "000000000")[:9])
    return int(secs) * 1_000_000_000 + (-ns if secs.startswith("-") else ns)


def members(
    reader: HashingReader, what: str
) -> Generator[tuple[tarfile.TarFile, tarfile.TarInfo], None, None]:
    """Each member of the tar on ``reader``, with the archive to read its data from.

    Ends after the last member only at a clean end of the archive; a truncated or garbage
    header raises :class:`BadInputError` (tarfile would end silently).
    """
    with tarfile.open(
        fileobj=cast(IO[bytes], reader),
        mode="r|",
        tarinfo=CheckedTarInfo,
        encoding="utf-8",
        errors="surrogateescape",
    ) as tf:
        while (ti := tf.next()) is not None:
            yield tf, ti
            cast(Any, tf).members.clear()  # stream mode keeps every header otherwise
        end = getattr(tf, "_layerseal_end", None)
    if not isinstance(end, _CLEAN_ENDS):
        raise BadInputError(
            expected_seen(
                f"{what}: tar stream",
                "an end-of-archive block of zeros, or the end of data after a whole member",
                f"{end or 'end of data'} after {reader.size} bytes (truncated or corrupt)",
            )
        )


def stored_size(ti: tarfile.TarInfo) -> int:
    """The data bytes the archive holds for a sparse member (its regions, back to back)."""
    return cast(CheckedTarInfo, ti).layerseal_stored


def stored_data(tf: tarfile.TarFile, ti: tarfile.TarInfo) -> IO[bytes] | None:
    """A reader of the :func:`stored_size` data bytes of a sparse member."""
    raw = copy.copy(ti)
    raw.sparse = None
    raw.size = stored_size(ti)
    return tf.extractfile(raw)
