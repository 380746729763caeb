"""The decrypted-layer cache: found only with the layer's key, sealed, verified on every reuse.

Why it looks like this (issue 12): a cache keyed by the public diff_id hands plaintext to
any image whose config *claims* that diff_id, keyless and revoked runs included; and a
cache the host can edit feeds its edits into the next rootfs.  So:

* A snapshot of an **encrypted** layer is named ``e-`` + HMAC-SHA256(K_name, blob digest,
  diff_id), K_name derived (HKDF) from that layer's key and nonce.  A run that did not
  obtain this very blob's key cannot compute the name, so it cannot even find the
  snapshot; a config naming the diff_id leads nowhere.
* A snapshot of a **plain** layer is named ``p-`` + diff_id: plain content is public and
  may be shared between images by diff_id.  It was committed only after its tar hashed to
  that diff_id, so a config that lies about a diff_id cannot obtain it either.
* Every snapshot carries a **seal**: HMAC-SHA256 with K_seal over a digest of its whole
  tree (path, type, mode, owner, mtime, size, content hash, link target, device number,
  xattrs and hard-link group of every entry).  K_seal derives from the layer key for
  encrypted layers, and from a per-cache secret (``secret``, 0600) for plain ones.  Reuse
  recomputes the digest; any mismatch discards the snapshot and rebuilds it from the blob.

Layout under the root (directories 0700)::

    secret                    32 random bytes: the seal key of plain-layer snapshots
    snap/<name>/tree/         one unpacked layer (format: :mod:`layerseal.engine.unpack`)
    snap/<name>/seal.json     {"version", "diff_id", "mac"}
    snap/<name>/users/<store>/<alg>-<hex>
                              the blob stores whose runs used it, and for which blobs
                              (for gc; not sealed)
    snap/<name>/used          its mtime: the last time a run built or reused it (for gc)
    work/<name>.<pid>.<rand>  a snapshot being built, or being removed (``.rm``)
    bundles/layerseal-bundle-<id>  the bundle of a ``layerseal run`` (locks/bundle-<id>)
    locks/<name>              flock: shared while a run reads the snapshot, exclusive to
                              build, check-and-discard or remove it

A work directory whose name lock is free belongs to a dead process (a killed pull or gc):
gc and every pull remove those; a live builder holds the lock for as long as it works.

The seal detects changes made between runs.  It cannot stop a host that can write the
cache *while* a run stacks it, nor one that can read the plain-layer secret; so the
cache must live in enclave-private storage (see ``docs/cache.md``): then the seal is
defence in depth and the names are what keeps one tenant's plaintext from another.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import resource
import secrets
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the unpack code (tarfile) is not needed to remove a tree: fdtree's is the one unpack exports
from layerseal.engine.fdtree import remove_tree
from layerseal.errors import BadInputError
from layerseal.image.digest import Digest

# cryptography and the thread pool load when a key is derived or a tree sealed: opening the
# cache (before the image's source is opened) must not cost a pull that fails on it (issue 20)
if TYPE_CHECKING:
    from concurrent.futures import Future

    from layerseal.image.encryption import PrivateOptions

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SEAL_VERSION = 1
_SEAL_MAX = 64 * 1024
_HASH_WORKERS = 2
_HASH_AHEAD = 64  # content hashes in flight while the walk goes on (bounds open files)
_HASH_INLINE = 64 * 1024  # smaller files are hashed on the walking thread (a hop costs more)

#: SHA-256 of regular files' content as their writer computed it while writing them:
#: (st_dev, st_ino) -> (size, digest).  :func:`tree_digest` takes an entry in place of
#: reading the file back only when the file's size on disk is that size (a file of size 0
#: has one content, so a stale entry of an empty file is still right); every other field
#: is read from disk all the same.
ContentHashes = Mapping[tuple[int, int], tuple[int, bytes]]


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True)
class SnapshotKey:
    """Where one layer's snapshot lives and the key that seals it (never printed)."""

    name: str
    diff_id: Digest
    blob: Digest
    encrypted: bool
    seal_key: bytes = field(repr=False)


@dataclass(frozen=True)
class SnapshotGcReport:
    removed: int
    kept: int
    busy: int
    leftovers: int


class Lease:
    """A snapshot held for reading (its lock shared): gc and rebuilds wait until :meth:`close`."""

    def __init__(self, tree: Path, reused: bool, discarded: bool, fd: int) -> None:
        self.tree, self.reused, self.discarded = tree, reused, discarded
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- the tree digest -----------------------------------------------------------------------


def _hash_file(f: io.FileIO) -> bytes:
    with f:
        return hashlib.file_digest(f, "sha256").digest()


def _field(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


def _xattr_digest(target: int | str) -> bytes:
    """Digest of the xattrs of an open file (fd) or of a path not followed; b"" when none."""
    follow = isinstance(target, int)  # an fd cannot be combined with follow_symlinks=False
    try:
        names = sorted(os.listxattr(target, follow_symlinks=follow))
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return b""
        raise
    h = hashlib.sha256()
    for n in names:
        h.update(_field(n.encode("utf-8", "surrogateescape")))
        h.update(_field(os.getxattr(target, n, follow_symlinks=follow)))
    return h.digest() if names else b""


def _xattrs(dir_fd: int, name: str) -> bytes:
    return _xattr_digest(f"/proc/self/fd/{dir_fd}/{name}")


def _raise_fd_limit(depth: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = depth + _HASH_AHEAD + 256
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard)
        )


def tree_digest(root: Path, known: ContentHashes | None = None) -> bytes:
    """SHA-256 over every entry under *root* in sorted order; follows no symlink.

    Content is hashed on a small thread pool (hashlib releases the GIL) while the walk
    goes on; memory is bounded by the directory depth and ``_HASH_AHEAD`` records.

    *known* (only from the process that just wrote the tree, never for a check of a tree
    found on disk) spares reading back files whose content hash their writer computed: the
    digest is the one computed from disk, since such a file is still opened (a file the
    owner cannot read is recorded as such) and every other field comes from disk.
    """
    known = known or {}
    from concurrent.futures import ThreadPoolExecutor

    out = hashlib.sha256()
    pending: deque[tuple[bytes, Future[bytes] | bytes | None, bytes]] = deque()
    links: dict[tuple[int, int], bytes] = {}

    def flush(keep: int) -> None:
        while len(pending) > keep:
            head, fut, tail = pending.popleft()
            out.update(head)
            out.update(_field(b"" if fut is None else fut if isinstance(fut, bytes) else fut.result()))
            out.update(tail)

    def record(
        path: bytes, st: os.stat_result, extra: bytes, xattrs: bytes, fut: Future[bytes] | bytes | None
    ) -> None:
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        head = _field(path) + b" %o %d %d %d %d %d " % (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            size,
            rdev,
        )
        pending.append((head, fut, b" " + _field(extra) + b" " + _field(xattrs) + b"\n"))
        flush(_HASH_AHEAD)

    with ThreadPoolExecutor(max_workers=_HASH_WORKERS, thread_name_prefix="layerseal-seal") as pool:
        root_fd = os.open(root, _DIR_FLAGS)
        stack: list[tuple[int, bytes, Iterator[str]]] = []
        try:
            record(b"", os.fstat(root_fd), b"", _xattrs_of_fd(root_fd), None)
            stack.append((root_fd, b"", iter(sorted(os.listdir(root_fd), key=os.fsencode))))
            while stack:
                dir_fd, prefix, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    os.close(dir_fd)
                    continue
                path = prefix + os.fsencode(name)
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                mode = st.st_mode
                key = (st.st_dev, st.st_ino)
                given = known.get(key)
                if given is not None and given[0] != st.st_size:
                    given = None
                if (
                    stat.S_ISREG(mode)
                    and (st.st_size < _HASH_INLINE or given is not None)
                    and (st.st_nlink == 1 or key not in links)
                ):
                    # most files of an image are small: read and hash them here, their
                    # xattrs through the open descriptor (no /proc path walk), no thread hop
                    if st.st_nlink > 1:
                        links[key] = path
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    except PermissionError:
                        record(path, st, b"unreadable", _xattrs(dir_fd, name), None)
                        continue
                    try:
                        xattrs = _xattr_digest(fd)
                        content = given[1] if given is not None else _hash_small(fd, st.st_size)
                    finally:
                        os.close(fd)
                    record(path, st, b"file", xattrs, content)
                    continue
                xattrs = _xattrs(dir_fd, name)
                if stat.S_ISDIR(mode):
                    record(path, st, b"dir", xattrs, None)
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                    except PermissionError:  # unprivileged and mode 0o300: stacking fails on it too
                        record(path, st, b"unreadable dir", b"", None)
                        continue
                    if len(stack) % 256 == 0:
                        _raise_fd_limit(len(stack))
                    stack.append((child, path + b"/", iter(sorted(os.listdir(child), key=os.fsencode))))
                elif stat.S_ISREG(mode):
                    first = links.setdefault((st.st_dev, st.st_ino), path) if st.st_nlink > 1 else path
                    if first != path:
                        record(path, st, b"link " + first, xattrs, None)
                        continue
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                    except PermissionError:
                        record(path, st, b"unreadable", xattrs, None)
                        continue
                    # the file object owns the fd: closed when hashed, or when dropped unhashed
                    record(path, st, b"file", xattrs, pool.submit(_hash_file, io.FileIO(fd, "rb")))
                elif stat.S_ISLNK(mode):
                    record(path, st, os.fsencode(os.readlink(name, dir_fd=dir_fd)), xattrs, None)
                else:
                    record(path, st, b"special", xattrs, None)
            flush(0)
        finally:
            for fd_, _, _ in stack:
                os.close(fd_)
            for _, fut, _ in pending:  # on error: the pool need not hash what nobody will read
                if isinstance(fut, Future):
                    fut.cancel()
    return out.digest()


def _xattrs_of_fd(fd: int) -> bytes:
    return _xattrs(fd, ".")


def _hash_small(fd: int, size: int) -> bytes:
    """SHA-256 of the rest of *fd* (to its end, whatever *size* said), as :func:`_hash_file`."""
    pieces = []
    while piece := os.read(fd, max(size, 4096) + 1):
        pieces.append(piece)
    return hashlib.sha256(b"".join(pieces)).digest()


# -- the store ----------------------------------------------------------------------------


def _mkdir_private(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise BadInputError(
                f"snapshot cache: expected {path} to be a directory, seen another kind of file"
            ) from None
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
        return
    os.chmod(path, 0o700)


class SnapshotStore:
    """Decrypted layer snapshots of one enclave (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # snapshots hold plaintext: only this user may even list them
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _mkdir_private(self.root)
        for sub in ("snap", "work", "locks"):
            _mkdir_private(self.root / sub)
        self._secret = self._load_secret()

    def _load_secret(self) -> bytes:
        path = self.root / "secret"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for _ in range(100):  # a concurrent creator may not have written it yet
                data = os.pread(fd, 64, 0)
                if len(data) == 32:
                    return data
                time.sleep(0.01)
        finally:
            os.close(fd)
        raise BadInputError(f"snapshot cache secret {path}: expected 32 bytes, seen {len(data)}")

    # -- names and keys -----------------------------------------------------------------

    def key_for(self, blob: Digest, diff_id: Digest, private: PrivateOptions | None) -> SnapshotKey:
        """The snapshot of a layer: keyed by the layer key when it is encrypted, else by diff_id."""
        if private is None:
            seal = _hkdf(self._secret, b"", b"layerseal plain snapshot seal v1")
            return SnapshotKey(f"p-{diff_id.algorithm}-{diff_id.hex}", diff_id, blob, False, seal)
        ikm = private.symkey
        name_key = _hkdf(ikm, private.nonce, b"layerseal snapshot name v1")
        name = hmac.new(name_key, f"{blob}\0{diff_id}".encode(), hashlib.sha256).hexdigest()
        seal = _hkdf(ikm, private.nonce, b"layerseal snapshot seal v1")
        return SnapshotKey(f"e-{name}", diff_id, blob, True, seal)

    def path(self, name: str) -> Path:
        return self.root / "snap" / name

    def _mac(self, key: SnapshotKey, digest: bytes) -> str:
        msg = b"layerseal snapshot v1\0%s\0%s\0%s" % (key.name.encode(), str(key.diff_id).encode(), digest)
        return hmac.new(key.seal_key, msg, hashlib.sha256).hexdigest()

    # -- locks ----------------------------------------------------------------------------

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / name

    def _lock(self, name: str, op: int) -> int | None:
        """flock locks/<name>; the fd, or None when LOCK_NB was asked and it is taken."""
        path = self.lock_path(name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, op)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            # gc unlinks lock files it holds: a lock on an unlinked inode protects nothing
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    # -- reading and building -------------------------------------------------------------

    def _read_seal(self, name: str) -> bytes | None:
        try:
            fd = os.open(self.path(name) / "seal.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return b""
            raise
        try:
            return os.read(fd, _SEAL_MAX)
        finally:
            os.close(fd)

    def _exists(self, name: str) -> bool:
        try:
            return stat.S_ISDIR(self.path(name).lstat().st_mode)
        except FileNotFoundError:
            return False

    def _valid(self, key: SnapshotKey, seal: bytes | None) -> bool:
        """True when the seal parses, names this diff_id and matches the tree as it is now."""
        if not seal:
            return False
        try:
            obj: Any = json.loads(seal)
            ok = obj["version"] == _SEAL_VERSION and obj["diff_id"] == str(key.diff_id)
            mac = str(obj["mac"])
        except (ValueError, KeyError, TypeError):
            return False
        if not ok:
            return False
        try:
            digest = tree_digest(self.path(key.name) / "tree")
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return False
            raise
        return hmac.compare_digest(mac, self._mac(key, digest))

    def _note_use(self, key: SnapshotKey, base: Path, user: str) -> None:
        try:
            self._note_use_unchecked(key, base, user)
        except OSError as e:
            # gc hints only: a full disk must not stop a run from reusing its cache
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or base.parent != self.root / "snap":
                raise

    def _note_use_unchecked(self, key: SnapshotKey, base: Path, user: str) -> None:
        blobs = base / "users" / user
        for d in (base / "users", blobs):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700)
        mark = blobs / f"{key.blob.algorithm}-{key.blob.hex}"
        os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        used = base / "used"
        os.close(os.open(used, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.utime(used)

    def _work_dir(self, name: str, suffix: str = "") -> Path:
        path = self.root / "work" / f"{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"
        path.mkdir(mode=0o700)
        return path

    def _remove_locked(self, name: str) -> None:
        """Remove snapshot *name* (its lock held): renamed away first, so it vanishes at once."""
        if not self._exists(name):
            return
        doomed = self._work_dir(name, ".rm")
        os.rename(self.path(name), doomed / "x")
        remove_tree(doomed)

    def _remove_work_of(self, name: str) -> int:
        """Remove the work directories of *name*; its lock must be held (so their writers are dead)."""
        count = 0
        for entry in (self.root / "work").iterdir():
            if entry.name.split(".", 1)[0] == name:
                remove_tree(entry)
                count += 1
        return count

    def _build_locked(
        self, key: SnapshotKey, build: Callable[[Path], ContentHashes | None], user: str
    ) -> bytes:
        """Build, seal and commit *key*'s snapshot (its lock held exclusively); returns the seal."""
        work = self._work_dir(key.name)
        try:
            known = build(work / "tree")
            mac = self._mac(key, tree_digest(work / "tree", known))
            seal = json.dumps({"version": _SEAL_VERSION, "diff_id": str(key.diff_id), "mac": mac}).encode()
            out = os.open(work / "seal.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(out, seal)
            finally:
                os.close(out)
            self._note_use(key, work, user)
            os.rename(work, self.path(key.name))
        except BaseException:
            remove_tree(work)
            raise
        return seal

    def acquire(
        self, key: SnapshotKey, build: Callable[[Path], ContentHashes | None], user: str = "default"
    ) -> Lease:
        """The verified snapshot of *key*, built with ``build(tree_dir)`` if absent or altered.

        *user* names the blob store the run pulls through (see :func:`user_of`): gc with
        that store judges only the snapshots its runs used.

        ``build`` must fill the new directory it is given and raise unless the layer
        verified; it may return the content hashes of the files it wrote (see
        :data:`ContentHashes`), which spare the seal reading them back.  Reuse always
        recomputes the seal from disk.  The lease holds the snapshot's lock shared; close it once the rootfs
        is built.
        """
        trusted: bytes | None = None  # a seal verified or made under the exclusive lock
        built = discarded = False
        while True:
            fd = self._lock(key.name, fcntl.LOCK_SH)
            assert fd is not None
            try:
                seal = self._read_seal(key.name)
                if (trusted is not None and seal == trusted) or (trusted is None and self._valid(key, seal)):
                    self._note_use(key, self.path(key.name), user)
                    return Lease(self.path(key.name) / "tree", not built, discarded, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            # no lock is held while waiting for this one, and a builder waits for no other:
            # concurrent pulls sharing layers cannot deadlock
            fd = self._lock(key.name, fcntl.LOCK_EX)
            assert fd is not None
            try:
                seal = self._read_seal(key.name)
                if self._valid(key, seal):
                    trusted = seal  # another run built it meanwhile
                    continue
                if self._exists(key.name):
                    discarded = True  # altered, unsealed or damaged: never used
                    log.warning(
                        "snapshot cache %s: snapshot %s of %s failed its seal (changed on disk); "
                        "discarded, rebuilding it from the verified blob",
                        self.root,
                        key.name[:18],
                        key.diff_id,
                    )
                    self._remove_locked(key.name)
                self._remove_work_of(key.name)  # a killed build of this very snapshot
                trusted = self._build_locked(key, build, user)
                built = True
            finally:
                os.close(fd)

    # -- maintenance ----------------------------------------------------------------------

    def remove_leftovers(self) -> int:
        """Remove what dead builders, removers and runs left; a live one holds its lock."""
        count = self._remove_dead_bundles()
        for name in sorted({e.name.split(".", 1)[0] for e in (self.root / "work").iterdir()}):
            fd = self._lock(name, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                continue
            try:
                count += self._remove_work_of(name)
            finally:
                os.close(fd)
        return count

    @contextlib.contextmanager
    def bundle_dir(self) -> Iterator[Path]:
        """A new private directory for a run's bundle (a decrypted rootfs), live while in use.

        The run holds ``locks/bundle-<id>`` meanwhile; once it is gone (ended, killed, or
        ``--keep-bundle``), gc and later pulls remove the directory.
        """
        parent = self.root / "bundles"
        _mkdir_private(parent)
        token = secrets.token_hex(8)
        fd = self._lock(f"bundle-{token}", fcntl.LOCK_EX)
        assert fd is not None
        try:
            path = parent / f"layerseal-bundle-{token}"
            path.mkdir(mode=0o700)
            yield path
        finally:
            os.close(fd)

    def _remove_dead_bundles(self) -> int:
        count = 0
        parent = self.root / "bundles"
        if not parent.is_dir():
            return 0
        for entry in sorted(parent.iterdir()):
            token = entry.name.removeprefix("layerseal-bundle-")
            if token == entry.name:
                continue
            fd = self._lock(f"bundle-{token}", fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                continue
            try:
                remove_tree(entry)
                self.lock_path(f"bundle-{token}").unlink(missing_ok=True)
                count += 1
            finally:
                os.close(fd)
        return count

    def names(self) -> list[str]:
        return sorted(e.name for e in (self.root / "snap").iterdir())

    def users_of(self, name: str) -> dict[str, set[Digest]]:
        """Which stores' runs used snapshot *name*, and the blobs each used it for."""
        out: dict[str, set[Digest]] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for user in (self.path(name) / "users").iterdir():
                blobs = out.setdefault(user.name, set())
                for entry in user.iterdir():
                    alg, _, hex_ = entry.name.partition("-")
                    with contextlib.suppress(BadInputError):
                        blobs.add(Digest(alg, hex_))
        return out

    def last_used(self, name: str) -> float:
        try:
            return (self.path(name) / "used").lstat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return 0.0

    def gc(
        self, user: str, referenced: set[Digest], max_idle: float | None, now: float | None = None
    ) -> SnapshotGcReport:
        """gc on behalf of the store *user*, whose images reference *referenced*.

        Of the snapshots that store's runs used, it removes those no run reused for
        *max_idle* seconds, and forgets that store's use of those whose blobs it no longer
        references; a snapshot no store uses any more is removed.  Snapshots of other
        stores are left to their gc; one in use (its lock held) is left for a later gc.
        Leftovers of killed pulls are removed too.
        """
        now = time.time() if now is None else now
        removed = kept = busy = 0
        for name in self.names():
            fd = self._lock(name, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                busy += 1
                continue
            try:
                users = self.users_of(name)
                if user in users:
                    if max_idle is not None and now - self.last_used(name) >= max_idle:
                        users = {}
                    elif not users[user] & referenced:
                        remove_tree(self.path(name) / "users" / user)
                        del users[user]
                if users:
                    kept += 1
                else:
                    self._remove_locked(name)
                    self.lock_path(name).unlink(missing_ok=True)
                    removed += 1
            finally:
                os.close(fd)
        return SnapshotGcReport(removed, kept, busy, self.remove_leftovers())


def user_of(store_root: Path) -> str:
    """The name under which a blob store's runs are recorded in a snapshot."""
    return hashlib.sha256(str(Path(store_root).resolve()).encode()).hexdigest()[:32]
