"""Writing OCI runtime bundles and running them with runc, crun or bubblewrap.

A container is always deleted from the runtime's state when :func:`run_bundle` returns
or raises (KeyboardInterrupt included); the bundle directory itself belongs to the caller.
Output is streamed as it comes: stdout/stderr with a file descriptor are handed to the
runtime directly, other streams (``io.StringIO``, captured ``sys.stdout``) are fed by
threads copying from pipes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from layerseal.errors import BadInputError, NotFoundError, TransportError, expected_seen
from layerseal.layout.atomic import write_file_atomic
from layerseal.wire.jsonload import loads, loads_object, object_or_none

RUNTIMES = ("runc", "crun", "bwrap")
_OCI_RUNTIMES = ("runc", "crun")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_USER_DB_LIMIT = 4 << 20
_STOP_GRACE_SECONDS = 10.0


class CommandNotRunError(BadInputError):
    """The container started but its command could not be run: not found (127), or found
    but not executable (126), the statuses podman and shells use."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        #: the status ``layerseal run`` exits with, as the container's command would have
        self.container_status = status


# runc/crun's words when execve in the container failed
_NOT_FOUND = ("no such file or directory", "executable file not found", "not found in $path")
_NOT_RUNNABLE = ("permission denied", "is a directory", "exec format error")


def _command_error(message: str) -> int | None:
    text = message.lower()
    if "exec" not in text:
        return None
    if any(w in text for w in _NOT_FOUND):
        return 127
    if any(w in text for w in _NOT_RUNNABLE):
        return 126
    return None


@dataclass(frozen=True)
class Runtime:
    """A container runtime found on this machine; ``kind`` is runc, crun or bwrap."""

    kind: str
    path: str


def find_runtime(name: str | None = None) -> Runtime:
    """The runtime named *name* (a name on PATH or a path), else the first of runc, crun, bwrap."""
    if name:
        path = name if "/" in name else shutil.which(name)
        if path is None or not os.access(path, os.X_OK):
            raise NotFoundError(f"container runtime {name!r}: expected an executable, seen none")
        kind = os.path.basename(path)
        if kind not in RUNTIMES:
            # other OCI runtimes (youki, runsc) share runc's command line
            kind = "runc"
        return Runtime(kind, path)
    for candidate in RUNTIMES:
        found = shutil.which(candidate)
        if found is not None:
            return Runtime(candidate, found)
    raise NotFoundError(
        f"container runtime: expected one of {', '.join(RUNTIMES)} on PATH, seen none "
        f"(PATH={os.environ.get('PATH', '')})"
    )


def write_bundle(bundle_dir: Path, spec: dict[str, Any]) -> None:
    """Write *spec* as ``bundle_dir/config.json`` atomically (the rootfs is the caller's)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise NotFoundError(f"bundle directory {bundle_dir}: expected a directory, seen none")
    data = json.dumps(spec, indent=2).encode() + b"\n"
    write_file_atomic(bundle_dir / "config.json", data, mode=0o600)


def read_rootfs_file(rootfs: Path, relpath: str, limit: int = _USER_DB_LIMIT) -> bytes | None:
    """Read *relpath* inside *rootfs* without following any symlink; None when absent.

    The rootfs comes from an image: a symlink ``etc/passwd -> /host/file`` must not
    make the engine read a file of the host.
    """
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise BadInputError(expected_seen("rootfs path", "a relative path without '..'", relpath))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(rootfs, flags | os.O_DIRECTORY)
    except OSError as exc:
        raise NotFoundError(f"rootfs {rootfs}: expected a directory, seen {exc.strerror}") from exc
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=dir_fd)
            except OSError:
                return None
            os.close(dir_fd)
            dir_fd = nxt
        try:
            fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            # a fifo or device planted as etc/passwd would block or never end
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = f.read(limit + 1)
    finally:
        os.close(dir_fd)
    if len(data) > limit:
        raise BadInputError(f"rootfs {rootfs}/{relpath}: expected at most {limit} bytes, seen more")
    return data


def read_user_db(rootfs: Path) -> tuple[bytes | None, bytes | None]:
    """The rootfs' ``/etc/passwd`` and ``/etc/group`` bytes for :func:`bundle.resolve_user`."""
    return read_rootfs_file(rootfs, "etc/passwd"), read_rootfs_file(rootfs, "etc/group")


# -- output plumbing --------------------------------------------------------------------


def _fileno(stream: IO[Any]) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class _Sink:
    """Where one output of the container goes: a descriptor, or a pipe plus copy thread."""

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.fd = _fileno(stream)
        self.thread: threading.Thread | None = None
        if self.fd is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()  # what Python buffered must come before the container's output

    @property
    def target(self) -> int:
        return self.fd if self.fd is not None else subprocess.PIPE

    def start(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        self.thread = threading.Thread(target=self._copy, args=(pipe,), daemon=True)
        self.thread.start()

    def _copy(self, pipe: IO[bytes]) -> None:
        text = isinstance(self.stream, io.TextIOBase)
        with pipe:
            while chunk := pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536):
                try:
                    self.stream.write(chunk.decode(errors="replace") if text else chunk)
                    self.stream.flush()
                except (OSError, ValueError):
                    continue  # the reader went away: keep draining so the container never blocks

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


# -- running ----------------------------------------------------------------------------


def _container_id(container_id: str | None) -> str:
    cid = container_id or f"layerseal-{secrets.token_hex(8)}"
    if not _ID_RE.match(cid):
        raise BadInputError(
            expected_seen("container id", "letters, digits, '_', '.', '-' (at most 128)", repr(cid))
        )
    return cid


def _bwrap_command(runtime: Runtime, bundle_dir: Path, spec: dict[str, Any]) -> list[str]:
    """Translate the parts of a runtime spec bubblewrap can express."""
    proc = spec.get("process") or {}
    root = spec.get("root") or {}
    rootfs = Path(root.get("path", "rootfs"))
    if not rootfs.is_absolute():
        rootfs = bundle_dir / rootfs
    cmd = [runtime.path, "--die-with-parent", "--new-session", "--clearenv"]
    cmd += ["--ro-bind" if root.get("readonly") else "--bind", str(rootfs), "/"]
    ns = {n.get("type") for n in (spec.get("linux") or {}).get("namespaces", [])}
    for kind, flag in (("pid", "--unshare-pid"), ("ipc", "--unshare-ipc"), ("network", "--unshare-net")):
        if kind in ns:
            cmd.append(flag)
    if "uts" in ns:
        cmd += ["--unshare-uts", "--hostname", str(spec.get("hostname") or "layerseal")]
    container_shm = "/dev/shm"  # noqa: S108 - a path inside the container, not on the host
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", container_shm, "--mqueue", "/dev/mqueue"]
    cmd += ["--ro-bind", "/sys", "/sys"]
    for env in proc.get("env", []):
        name, _, value = env.partition("=")
        cmd += ["--setenv", name, value]
    user = proc.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if (uid, gid) != (0, 0) or os.geteuid() != 0:
        cmd += ["--unshare-user", "--uid", str(uid), "--gid", str(gid)]
    if os.geteuid() == 0:
        # bwrap keeps every capability for root unless told otherwise
        cmd += ["--cap-drop", "ALL"]
        for cap in (proc.get("capabilities") or {}).get("bounding", []):
            cmd += ["--cap-add", cap]
    cmd += ["--chdir", str(proc.get("cwd") or "/"), "--", *proc.get("args", [])]
    return cmd


def _runtime_errors(log_path: Path) -> list[str]:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    errors = []
    for line in lines:
        entry = object_or_none(line)
        if entry is not None and entry.get("level") in ("error", "fatal"):
            errors.append(str(entry.get("msg", "")))
    return errors


def state_root_args() -> list[str]:
    """``--root DIR`` for runc/crun when not running as root, else nothing.

    Rootless, runc keeps its state in ``$XDG_RUNTIME_DIR/runc`` and fails on ``/run/runc``
    when that variable is unset (a service account, ``su``, cron): layerseal then uses a
    directory of its own in the temporary directory, made 0700 and checked to belong to
    this user, so another local user cannot prepare or read it.
    """
    if os.geteuid() == 0 or os.environ.get("XDG_RUNTIME_DIR"):
        return []
    root = Path(tempfile.gettempdir()) / f"layerseal-runc-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = root.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise BadInputError(
            expected_seen(
                f"runtime state directory {root}",
                f"a directory of uid {os.geteuid()} with mode 0700",
                f"uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
                + ("" if stat.S_ISDIR(st.st_mode) else ", not a directory"),
            )
            + " (set XDG_RUNTIME_DIR to use another)"
        )
    return ["--root", str(root)]


def _delete(runtime: Runtime, cid: str) -> None:
    # nothing more can be done if this fails; the caller's error (if any) matters more
    with contextlib.suppress(OSError, subprocess.TimeoutExpired, BadInputError):
        subprocess.run(
            [runtime.path, *state_root_args(), "delete", "--force", cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # runc forwards SIGTERM to the container's init, which may clean up
    proc.terminate()
    try:
        proc.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _log_file() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="layerseal-runtime-"))
    try:
        yield tmp / "runtime.log"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_bundle(
    bundle_dir: Path,
    *,
    container_id: str | None = None,
    runtime: str | None = None,
    stdout: IO[Any] | None = None,
    stderr: IO[Any] | None = None,
    stdin: IO[Any] | None = None,
) -> int:
    """Run the bundle in *bundle_dir* to completion and return the container's exit status.

    stdin is /dev/null unless given.  Raises :class:`TransportError` when the runtime
    itself fails (for runc/crun: it logged an error, e.g. the command is missing from
    the rootfs), so a returned status always comes from the container.
    """
    bundle_dir = Path(bundle_dir).resolve()
    config_path = bundle_dir / "config.json"
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"bundle {bundle_dir}: expected config.json, seen none") from exc
    spec = loads_object(raw, f"bundle {config_path}")
    rt = find_runtime(runtime)
    cid = _container_id(container_id)
    out = _Sink(stdout if stdout is not None else sys.stdout)
    err = _Sink(stderr if stderr is not None else sys.stderr)
    stdin_target: int | IO[Any] = subprocess.DEVNULL if stdin is None else stdin

    with _log_file() as log_path:
        if rt.kind in _OCI_RUNTIMES:
            cmd = [rt.path, *state_root_args(), "--log", str(log_path), "--log-format", "json"]
            cmd += ["run", "--bundle", str(bundle_dir), cid]
        else:
            cmd = _bwrap_command(rt, bundle_dir, spec)
        try:
            try:
                proc = subprocess.Popen(cmd, stdin=stdin_target, stdout=out.target, stderr=err.target)
            except OSError as exc:
                raise TransportError(f"container runtime {rt.path}: could not start ({exc})") from exc
            try:
                out.start(proc.stdout)
                err.start(proc.stderr)
                status = proc.wait()
            except BaseException:
                _stop(proc)
                raise
            finally:
                out.join()
                err.join()
        finally:
            if rt.kind in _OCI_RUNTIMES:
                _delete(rt, cid)
        if rt.kind in _OCI_RUNTIMES:
            errors = _runtime_errors(log_path)
            if errors:
                message = (
                    f"container {cid} ({rt.kind}, bundle {bundle_dir}): runtime failed with "
                    f"status {status}: {errors[-1]}"
                )
                command_status = _command_error(errors[-1])
                if command_status is not None:
                    args = " ".join(spec.get("process", {}).get("args", []))
                    raise CommandNotRunError(
                        f"container {cid}: command {args!r}: expected an executable in the image, "
                        f"seen {errors[-1].rsplit(': ', 1)[-1]} ({rt.kind}: {errors[-1]})",
                        command_status,
                    )
                raise TransportError(message)
    # a container killed by a signal: report it the way a shell does
    return status if status >= 0 else 128 - status


def list_containers(runtime: str | None = None) -> Sequence[str]:
    """Ids of the containers the runtime knows (runc/crun only), for checks and cleanup."""
    rt = find_runtime(runtime)
    if rt.kind not in _OCI_RUNTIMES:
        return ()
    result = subprocess.run(
        [rt.path, *state_root_args(), "list", "--format", "json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise TransportError(
            expected_seen(f"{rt.kind} list", "status 0", f"{result.returncode}: {result.stderr.decode()!r}")
        )
    entries = loads(result.stdout or b"null", f"{rt.kind} list --format json") or []
    return tuple(str(e.get("id")) for e in entries if isinstance(e, dict))
