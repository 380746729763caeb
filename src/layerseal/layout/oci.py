"""OCI image layout directories (``oci:DIR[:TAG]``) as image sources and destinations.

Blobs a destination receives are staged in a private temporary directory inside the
layout and moved into ``blobs/`` only when the manifest is committed, so a failed copy
leaves the layout exactly as it was.  ``index.json`` is rewritten atomically under an
exclusive lock and keeps every other entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from layerseal.errors import BadInputError, IntegrityError, NotFoundError
from layerseal.image import mediatypes as mt
from layerseal.image.transport import CHUNK_SIZE, ImageDestination
from layerseal.layout.atomic import fsync_dir, write_file_atomic

# the image model, hashlib and tempfile load when a layout is read or written: opening a
# missing layout fails without them (issue 20)
if TYPE_CHECKING:
    from layerseal.image.descriptor import Descriptor
    from layerseal.image.digest import Digest
    from layerseal.image.manifest import Index

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_CONTENT = b'{"imageLayoutVersion":"1.0.0"}'
_TMP_DIR = ".layerseal-tmp"


def _umask() -> int:
    # os.umask can only be read by setting it; done once, before worker threads write files
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


class LayoutReference(NamedTuple):
    """``oci:DIR[:TAG]`` (the first ``:`` after the directory separates the tag, as in skopeo).

    A named tuple, not a dataclass: ``dataclasses`` (with ``inspect``) costs a command that
    fails on a missing layout 5-8 ms of start-up (issue 20).
    """

    path: Path
    tag: str | None

    @classmethod
    def parse(cls, text: str) -> LayoutReference:
        body = text.removeprefix("oci:")
        path, sep, tag = body.partition(":")
        if not path:
            raise BadInputError(f"image reference {text!r}: expected oci:DIR[:TAG], seen an empty directory")
        if sep and not tag:
            raise BadInputError(f"image reference {text!r}: expected a tag after ':', seen nothing")
        if tag and (len(tag) > 128 or any(c.isspace() or c == "/" for c in tag)):
            raise BadInputError(
                f"image reference {text!r}: expected a tag without spaces or '/', seen {tag!r}"
            )
        return cls(Path(path), tag or None)

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


class OciLayout:
    """An OCI image layout directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path) -> OciLayout:
        marker = path / LAYOUT_FILE
        if not marker.is_file():
            raise NotFoundError(f"OCI layout {path}: expected an '{LAYOUT_FILE}' file, seen none")
        from layerseal.image import jsonutil

        obj = jsonutil.loads(marker.read_bytes(), f"OCI layout {path}/{LAYOUT_FILE}")
        version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
        if version != "1.0.0":
            raise BadInputError(f"OCI layout {path}: expected imageLayoutVersion 1.0.0, seen {version!r}")
        return cls(path)

    @classmethod
    def create(cls, path: Path) -> OciLayout:
        """Open the layout at *path*, creating an empty one if the directory has none."""
        if (path / LAYOUT_FILE).exists():
            return cls.open(path)
        from layerseal.image.manifest import Index

        path.mkdir(parents=True, exist_ok=True)
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (path / "index.json").exists():
            write_file_atomic(path / "index.json", Index(manifests=(), media_type=mt.OCI_INDEX).to_bytes())
        write_file_atomic(path / LAYOUT_FILE, LAYOUT_CONTENT)
        return cls(path)

    # -- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, desc: Descriptor, limit: int | None = None) -> bytes:
        if limit is not None and desc.size > limit:
            raise BadInputError(f"blob {desc.digest}: expected at most {limit} bytes, seen size {desc.size}")
        return b"".join(self.iter_blob(desc))

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        from layerseal.image.digest import DigestVerifier

        path = self.blob_path(desc.digest)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in finally of this generator
        except FileNotFoundError as exc:
            raise NotFoundError(f"OCI layout {self.path}: blob {desc.digest} is missing") from exc
        verifier = DigestVerifier(desc.digest, desc.size, what=f"blob {desc.digest} in {self.path}")
        try:
            while chunk := f.read(CHUNK_SIZE):
                verifier.update(chunk)
                yield chunk
        finally:
            f.close()
        verifier.verify()

    # -- index.json --------------------------------------------------------------------

    def read_index(self) -> Index:
        path = self.path / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"OCI layout {self.path}: index.json is missing") from exc
        from layerseal.image.manifest import Index

        return Index.from_bytes(data, f"{path}")

    def resolve(self, tag: str | None) -> Descriptor:
        index = self.read_index()
        if tag is None:
            if len(index.manifests) != 1:
                raise BadInputError(
                    f"OCI layout {self.path}: expected exactly one image when no tag is given, "
                    f"seen {len(index.manifests)}"
                )
            return index.manifests[0]
        for desc in index.manifests:
            if desc.annotations.get(REF_NAME) == tag:
                return desc
        tags = sorted(t for d in index.manifests if (t := d.annotations.get(REF_NAME)))
        raise NotFoundError(f"OCI layout {self.path}: expected tag {tag!r}, seen tags {tags or 'none'}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # lock the directory itself: index.json is replaced by rename, and a lock file
        # would be a stray entry in the layout
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_tag(self, desc: Descriptor, tag: str | None) -> None:
        """Point *tag* at *desc* in index.json, keeping every other entry."""
        from layerseal.image.manifest import Index

        with self._locked():
            index = self.read_index()
            entry = desc
            if tag is not None:
                entry = desc.with_changes(annotations={**desc.annotations, REF_NAME: tag})
                kept = [d for d in index.manifests if d.annotations.get(REF_NAME) != tag]
            else:
                kept = [
                    d
                    for d in index.manifests
                    if not (d.digest == desc.digest and REF_NAME not in d.annotations)
                ]
            new_index = Index(
                tuple([*kept, entry]), index.media_type or mt.OCI_INDEX, index.annotations, index.extra
            )
            write_file_atomic(self.path / "index.json", new_index.to_bytes())


class LayoutSource:
    """An OCI layout read as an :class:`~layerseal.image.transport.ImageSource`."""

    def __init__(self, ref: LayoutReference) -> None:
        self.ref = ref
        self.layout = OciLayout.open(ref.path)

    @property
    def name(self) -> str:
        return str(self.ref)

    def get_manifest(self, digest: Digest | None = None) -> tuple[bytes, str]:
        from layerseal.image.descriptor import Descriptor
        from layerseal.image.manifest import MAX_MANIFEST_BYTES, detect_media_type

        if digest is None:
            desc = self.layout.resolve(self.ref.tag)
        else:
            desc = Descriptor(media_type=mt.OCI_MANIFEST, digest=digest, size=0)
            size = self._blob_size(digest)
            desc = desc.with_changes(size=size)
        data = self.layout.read_blob(desc, limit=MAX_MANIFEST_BYTES)
        what = f"manifest {desc.digest} in {self.ref.path}"
        return data, detect_media_type(data, desc.media_type if digest is None else None, what)

    def _blob_size(self, digest: Digest) -> int:
        try:
            return self.layout.blob_path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"OCI layout {self.ref.path}: blob {digest} is missing") from exc

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        return self.layout.iter_blob(desc)

    def close(self) -> None:
        pass


class LayoutDestination(ImageDestination):
    """An OCI layout written as an :class:`~layerseal.image.transport.ImageDestination`."""

    def __init__(self, ref: LayoutReference) -> None:
        self.ref = ref
        existed = (ref.path / LAYOUT_FILE).exists()
        self._created_dir = not ref.path.exists()
        self.layout = OciLayout.create(ref.path) if existed else OciLayout(ref.path)
        self._fresh = not existed
        self._pending: dict[Digest, Path] = {}
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        _umask()

    @property
    def name(self) -> str:
        return str(self.ref)

    def _tmpdir(self) -> Path:
        with self._lock:
            if self._tmp is None:
                import tempfile

                self.ref.path.mkdir(parents=True, exist_ok=True)
                self._tmp = Path(tempfile.mkdtemp(prefix=_TMP_DIR + ".", dir=self.ref.path))
            return self._tmp

    def has_blob(self, desc: Descriptor) -> bool:
        with self._lock:
            if desc.digest in self._pending:
                return True
        path = self.layout.blob_path(desc.digest)
        try:
            return path.stat().st_size == desc.size
        except FileNotFoundError:
            return False

    def _write_blob(
        self, chunks: Iterable[bytes], expected: Descriptor | None, trusted: bool
    ) -> tuple[Digest, int]:
        import hashlib
        import tempfile

        from layerseal.image.digest import Digest

        # the thread pool (concurrent.futures, logging) loads on the first write, not for a read
        from layerseal.streams import Background

        fd, tmp_name = tempfile.mkstemp(prefix="blob.", dir=self._tmpdir())
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            hashing = Background(h.update)  # hashing overlaps with the write
            size = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    if not trusted:
                        hashing.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                hashing.wait()
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # as if created with open(): honour the user's umask
            digest = expected.digest if trusted and expected is not None else Digest("sha256", h.hexdigest())
            if expected is not None and (digest != expected.digest or size != expected.size):
                raise IntegrityError(
                    f"blob for {self.ref}: expected {expected.digest} ({expected.size} bytes), "
                    f"seen {digest} ({size} bytes)"
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            if digest in self._pending:
                tmp.unlink()
            else:
                self._pending[digest] = tmp
        return digest, size

    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        desc = self.put_blob([data], media_type)
        if self._fresh:
            self.layout = OciLayout.create(self.ref.path)
        blob_dir = self.ref.path / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            pending, self._pending = self._pending, {}
        for digest, tmp in pending.items():
            os.replace(tmp, self.layout.blob_path(digest))
        fsync_dir(blob_dir)
        self.layout.set_tag(desc, self.ref.tag)
        self._fresh = False
        self._created_dir = False
        return desc

    def close(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            tmp, self._tmp = self._tmp, None
        for path in pending.values():
            path.unlink(missing_ok=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if self._created_dir:
            # nothing was committed into a directory we created: leave no trace
            with contextlib.suppress(OSError):
                self.ref.path.rmdir()
