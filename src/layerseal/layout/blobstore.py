"""The content-addressed store of *encrypted* blobs shared by every engine of an enclave.

Layout under the store root (directories mode 0700)::

    blobs/<algorithm>/<hex>     the blob, mode 0444, only ever created by rename
    blobs/<algorithm>/.<hex>.*.tmp  a download in progress (or left by a crash)
    locks/<hex>                 flock(2) target for one digest
    locks/.refs                 flock(2) target serialising reference updates and gc
    refs/<sha256 of owner>.json {"owner": ..., "digests": [...]} written atomically

Concurrency: a download holds the digest's lock exclusively, a reader holds it shared
while streaming, so several processes fetch a blob once and gc never deletes a blob that
is being written or read.  Lock files are removed by gc while it holds them; every
locker re-checks after flock() that the file it locked is still the one at the path.

Only ciphertext belongs here: the store never decrypts, and nothing in it is trusted
without verification, since the host may have changed it.  Callers should call
:meth:`SharedBlobStore.add_refs` before fetching, so a concurrent gc never sees a wanted
blob unreferenced; :meth:`SharedBlobStore.iter_verified` re-fetches a blob that vanished.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerseal.errors import BadInputError, IntegrityError, NotFoundError
from layerseal.image import jsonutil
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.image.transport import CHUNK_SIZE
from layerseal.layout.atomic import fsync_dir, write_file_atomic

# tempfile and the hashing thread (concurrent.futures, logging) load with the first download:
# a pull opens the store before its image, and one whose image is missing fails without them
if TYPE_CHECKING:
    from layerseal.image.descriptor import Descriptor

_REFS_LOCK = ".refs"
_BLOB_MODE = 0o444


@dataclass(frozen=True)
class BlobEntry:
    digest: Digest
    size: int
    owners: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "size": self.size, "owners": list(self.owners)}


@dataclass(frozen=True)
class StoreStats:
    """What the store holds: every blob with its size and the owners referencing it."""

    root: Path
    blobs: tuple[BlobEntry, ...]
    owners: tuple[str, ...]

    @property
    def blob_count(self) -> int:
        return len(self.blobs)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "blob_count": self.blob_count,
            "total_bytes": self.total_bytes,
            "owners": list(self.owners),
            "blobs": [b.to_json() for b in self.blobs],
        }


@dataclass(frozen=True)
class GcReport:
    """What one gc run did."""

    removed_blobs: int
    freed_bytes: int
    kept_blobs: int
    #: unreferenced blobs left alone because another process was reading or writing them
    busy_blobs: int
    #: temporary files of crashed downloads that were removed
    removed_temp_files: int

    def to_json(self) -> dict[str, Any]:
        return {
            "removed_blobs": self.removed_blobs,
            "freed_bytes": self.freed_bytes,
            "kept_blobs": self.kept_blobs,
            "busy_blobs": self.busy_blobs,
            "removed_temp_files": self.removed_temp_files,
        }


def _mkdir_private(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise BadInputError(
                f"shared blob store: expected {path} to be a directory, seen another kind of file"
            ) from None
        return
    os.chmod(path, 0o700)  # mkdir's mode is narrowed by the umask; make it exact


class SharedBlobStore:
    """A directory of encrypted blobs addressed by digest, safe for concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # several engines may create the store at the same moment: every mkdir tolerates that
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _mkdir_private(self.root)
        for sub in ("blobs", "blobs/sha256", "locks", "refs"):
            _mkdir_private(self.root / sub)

    # -- paths and locks -----------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _lock_path(self, name: str) -> Path:
        return self.root / "locks" / name

    @contextlib.contextmanager
    def _lock(self, name: str, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """Hold flock on locks/<name>; yields False when *blocking* is off and it is taken."""
        path = self._lock_path(name)
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, op)
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            except BaseException:
                os.close(fd)
                raise
            # gc unlinks lock files it holds: a lock on an unlinked inode protects nothing
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield True
        finally:
            os.close(fd)

    # -- blobs ---------------------------------------------------------------------------

    def has(self, desc: Descriptor) -> bool:
        """True when a regular file of the right size is stored (its content is not hashed)."""
        try:
            st = os.lstat(self.path(desc.digest))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == desc.size

    def ensure(self, desc: Descriptor, fetch: Callable[[], Iterable[bytes]]) -> bool:
        """Make the blob present, calling *fetch* at most once across all processes.

        Returns True when this call downloaded the blob, False when it was already there.
        Raises :class:`IntegrityError` if the fetched bytes do not match *desc*; nothing
        is stored then, and nothing is stored either when *fetch* raises.
        """
        if self.has(desc):
            return False
        with self._lock(desc.digest.hex, exclusive=True):
            if self.has(desc):
                return False
            self._download(desc, fetch)
            return True

    def _download(self, desc: Descriptor, fetch: Callable[[], Iterable[bytes]]) -> None:
        for _ in self._download_through(desc, fetch):
            pass

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """Stream the stored blob, verifying size and digest; :class:`IntegrityError` on mismatch.

        The last chunk is yielded before the digest is checked, so consumers must treat
        their output as provisional until the iterator is exhausted without raising.
        """
        with self._lock(desc.digest.hex, exclusive=False):
            f = self._open_blob(desc)
            if f is None:
                raise NotFoundError(f"shared blob store {self.root}: blob {desc.digest} is missing")
            with f:
                yield from self._stream(desc, f)

    def _open_blob(self, desc: Descriptor) -> io.BufferedReader | None:
        try:
            # O_NOFOLLOW: a symlink planted in the store must not make us read other files
            fd = os.open(self.path(desc.digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IntegrityError(
                    f"blob {desc.digest} at {self.path(desc.digest)}: expected a regular file, seen a symlink"
                ) from exc
            raise
        return os.fdopen(fd, "rb")

    def _stream(self, desc: Descriptor, f: io.BufferedReader) -> Iterator[bytes]:
        path = self.path(desc.digest)
        verifier = DigestVerifier(desc.digest, desc.size, what=f"stored blob {desc.digest} at {path}")
        while chunk := f.read(CHUNK_SIZE):
            verifier.update(chunk)
            yield chunk
        verifier.verify()

    def _verify_stored(self, desc: Descriptor) -> bool:
        """Hash the stored copy without yielding anything; False if it is absent or wrong."""
        try:
            for _ in self.iter_blob(desc):
                pass
        except (IntegrityError, NotFoundError):
            return False
        return True

    def _remove_if_bad(self, desc: Descriptor) -> None:
        with self._lock(desc.digest.hex, exclusive=True):
            # another process may have repaired it while we waited for the lock
            if not self._verify_stored_unlocked(desc):
                self.path(desc.digest).unlink(missing_ok=True)

    def _verify_stored_unlocked(self, desc: Descriptor) -> bool:
        try:
            f = self._open_blob(desc)
        except IntegrityError:
            return False
        if f is None:
            return False
        try:
            with f:
                for _ in self._stream(desc, f):
                    pass
        except IntegrityError:
            return False
        return True

    def iter_verified(self, desc: Descriptor, fetch: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
        """Ensure the blob, then stream it verified; a tampered stored copy is replaced once.

        A copy this call did not download is hashed in full before its first byte is
        yielded, so a copy damaged at rest is repaired (removed and re-fetched) without
        the consumer ever seeing its bytes.  Should the copy change while it is being
        streamed, or the re-fetched copy be wrong too, :class:`IntegrityError` is raised
        and whatever the consumer made from the stream must be discarded.
        """
        downloaded = self.ensure(desc, fetch)
        if not downloaded and not self._verify_stored(desc):
            self._remove_if_bad(desc)
            self.ensure(desc, fetch)
        # up to twice: gc may remove an unreferenced blob between ensure() and our shared lock
        for attempt in range(2):
            with self._lock(desc.digest.hex, exclusive=False):
                f = self._open_blob(desc)
                if f is not None:
                    with f:
                        yield from self._stream(desc, f)
                    return
            if attempt == 0:
                self.ensure(desc, fetch)
        raise NotFoundError(
            f"shared blob store {self.root}: blob {desc.digest} vanished after it was fetched"
        )

    def stream_through(
        self,
        desc: Descriptor,
        fetch: Callable[[], Iterable[bytes]],
        on_fetch: Callable[[], None] | None = None,
        *,
        verified: bool = False,
    ) -> Iterator[bytes]:
        """Like :meth:`iter_verified`, but a blob that is missing is streamed while it is stored.

        The download is hashed, written to a temporary file and yielded in one pass; the
        blob is committed to the store only after its digest matched (at the end of the
        stream), so the consumer's output is provisional until then, as with
        :meth:`iter_blob`.  Other processes wanting the same blob wait on its lock and then
        find it present.  *on_fetch* is called when this call is the one downloading.

        ``verified=True`` says *fetch* returns an ``ImageSource.iter_blob(desc)`` stream,
        which raises unless the bytes match *desc*'s digest and size: the download is then
        not hashed a second time (it is still committed only on a clean end of that stream).
        """
        if not self.has(desc):
            with self._lock(desc.digest.hex, exclusive=True):
                if not self.has(desc):
                    if on_fetch is not None:
                        on_fetch()
                    yield from self._download_through(desc, fetch, verified=verified)
                    return
        yield from self.iter_verified(desc, fetch)

    def _download_through(
        self, desc: Descriptor, fetch: Callable[[], Iterable[bytes]], *, verified: bool = False
    ) -> Iterator[bytes]:
        import tempfile

        from layerseal.streams import Background

        final = self.path(desc.digest)
        _mkdir_private(final.parent)
        # the caller holds this digest's lock: other temporary files of it are a dead download's
        for stale in final.parent.glob(f".{desc.digest.hex}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{desc.digest.hex}.", suffix=".tmp", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            verifier = DigestVerifier(
                desc.digest, desc.size, what=f"blob {desc.digest} fetched for {self.root}"
            )
            # the digest is computed on a helper thread (hashlib releases the GIL) while this
            # thread writes and hands on the chunk; it is checked before anything is committed
            hashing = None if verified else Background(verifier.update)
            with os.fdopen(fd, "wb") as f:
                for chunk in fetch():
                    if hashing is not None:
                        hashing.update(chunk)
                    f.write(chunk)
                    yield chunk
                if hashing is not None:
                    hashing.wait()
                    verifier.verify()
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _BLOB_MODE)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)

    # -- references and gc ---------------------------------------------------------------

    def _ref_path(self, owner: str) -> Path:
        if not isinstance(owner, str) or not owner:
            raise BadInputError(f"shared blob store owner: expected a non-empty string, seen {owner!r}")
        return self.root / "refs" / f"{hashlib.sha256(owner.encode()).hexdigest()}.json"

    def _read_ref(self, path: Path) -> tuple[str, set[Digest]]:
        try:
            obj = jsonutil.loads(path.read_bytes(), f"shared blob store reference file {path}")
            owner = obj["owner"]
            digests = {Digest.parse(d) for d in obj["digests"]}
            if not isinstance(owner, str):
                raise TypeError("owner is not a string")
        except (ValueError, KeyError, TypeError, BadInputError) as exc:
            raise BadInputError(
                f"shared blob store reference file {path}: expected "
                f'{{"owner": str, "digests": [digest]}}, seen invalid content ({exc})'
            ) from exc
        return owner, digests

    def _read_refs(self) -> dict[str, set[Digest]]:
        refs: dict[str, set[Digest]] = {}
        for path in sorted((self.root / "refs").glob("*.json")):
            owner, digests = self._read_ref(path)
            refs[owner] = digests
        return refs

    def add_refs(self, owner: str, digests: Iterable[Digest]) -> None:
        """Record that *owner* needs *digests* (added to what it already references)."""
        path = self._ref_path(owner)
        wanted = set(digests)
        with self._lock(_REFS_LOCK, exclusive=True):
            current: set[Digest] = set()
            if path.exists():
                _, current = self._read_ref(path)
            merged = current | wanted
            if merged == current and path.exists():
                return
            data = json.dumps({"owner": owner, "digests": sorted(str(d) for d in merged)}, indent=1)
            write_file_atomic(path, data.encode(), mode=0o600)

    def release(self, owner: str) -> None:
        """Forget every reference of *owner*; its blobs go at the next gc unless others need them."""
        path = self._ref_path(owner)
        with self._lock(_REFS_LOCK, exclusive=True):
            if path.exists():
                path.unlink()
                fsync_dir(path.parent)

    def _stored(self) -> Iterator[tuple[Digest, os.stat_result]]:
        for alg_dir in sorted((self.root / "blobs").iterdir()):
            if not alg_dir.is_dir() or alg_dir.name.startswith("."):
                continue
            for entry in sorted(alg_dir.iterdir()):
                if entry.name.startswith("."):
                    continue
                try:
                    digest = Digest(alg_dir.name, entry.name)
                    st = entry.lstat()
                except (BadInputError, FileNotFoundError):
                    continue
                yield digest, st

    def gc(self) -> GcReport:
        """Remove blobs no owner references, and temporary files of crashed downloads.

        A blob locked by a concurrent download or reader is left for a later run.
        """
        removed = freed = kept = busy = temps = 0
        with self._lock(_REFS_LOCK, exclusive=True):
            referenced: set[Digest] = set().union(*self._read_refs().values())
            for digest, st in list(self._stored()):
                if digest in referenced:
                    kept += 1
                    continue
                with self._lock(digest.hex, exclusive=True, blocking=False) as got:
                    if not got:
                        busy += 1
                        continue
                    try:
                        self.path(digest).unlink()
                    except FileNotFoundError:
                        continue
                    self._lock_path(digest.hex).unlink(missing_ok=True)
                removed += 1
                freed += st.st_size
            temps = self.remove_stale_temps()
            for alg_dir in (self.root / "blobs").iterdir():
                if alg_dir.is_dir():
                    fsync_dir(alg_dir)
        return GcReport(removed, freed, kept, busy, temps)

    def remove_stale_temps(self) -> int:
        """Remove temporary files of dead downloads (a live download holds its digest's lock)."""
        count = 0
        for alg_dir in (self.root / "blobs").iterdir():
            if not alg_dir.is_dir():
                continue
            for entry in alg_dir.glob(".*.tmp"):
                hex_part = entry.name[1:].split(".", 1)[0]
                try:
                    Digest(alg_dir.name, hex_part)
                except BadInputError:
                    continue  # not a name _download makes: not ours to remove
                # the writer holds the digest lock for the whole download: free lock = dead writer
                with self._lock(hex_part, exclusive=True, blocking=False) as got:
                    if got:
                        entry.unlink(missing_ok=True)
                        count += 1
        return count

    def referenced(self) -> set[Digest]:
        """Every digest some owner references."""
        with self._lock(_REFS_LOCK, exclusive=False):
            return set().union(*self._read_refs().values())

    def stats(self) -> StoreStats:
        with self._lock(_REFS_LOCK, exclusive=False):
            refs = self._read_refs()
        owners_of: dict[Digest, list[str]] = {}
        for owner, digests in refs.items():
            for d in digests:
                owners_of.setdefault(d, []).append(owner)
        blobs = tuple(
            BlobEntry(d, st.st_size, tuple(sorted(owners_of.get(d, ())))) for d, st in self._stored()
        )
        return StoreStats(self.root, blobs, tuple(sorted(refs)))
