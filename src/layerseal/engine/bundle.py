"""OCI runtime bundle configuration (runtime-spec 1.0 ``config.json``) from an image config.

Pure: user names are resolved from the bytes of the rootfs' ``/etc/passwd`` and
``/etc/group``, which the caller reads (see :func:`layerseal.engine.runtime.read_user_db`).

Defaults follow ``runc spec`` (capabilities, masked and read-only paths, NOFILE limit,
devices denied) plus what podman adds: the default seccomp profile
(:mod:`layerseal.engine.seccomp`), a cgroup namespace with the container's own cgroup
mounted read-only at ``/sys/fs/cgroup``, and a pids limit (2048 unless told).  Deliberate
differences: no ambient capabilities (a non-root image user gets none, as with Docker), a
network namespace even when rootless (it holds only ``lo``: containers get no network),
and a writable root by default because images expect to write to their own filesystem;
the rootfs is the caller's private copy.

Rootless (not running as root): a user namespace maps the container user onto the caller,
and no cgroup limits are set, since an unprivileged caller cannot create cgroups on a
cgroup v1 host; asking for a limit then is refused rather than silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layerseal.engine.seccomp import default_profile
from layerseal.errors import BadInputError
from layerseal.image.config import ImageConfig

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NOFILE_LIMIT = 1024
#: podman's default (containers.conf ``pids_limit``): a fork bomb stops there
DEFAULT_PIDS_LIMIT = 2048
_CGROUP_MOUNT = {
    "destination": "/sys/fs/cgroup",
    "type": "cgroup",
    "source": "cgroup",
    "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
}


@dataclass(frozen=True)
class User:
    """The numeric identity a container process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str | None = None


def _parse_db(data: bytes | None, fields: int) -> list[list[str]]:
    if data is None:
        return []
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        # short lines are skipped, as libc does, rather than failing the whole container
        if len(parts) >= fields:
            rows.append(parts)
    return rows


def _id(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        return value if value < 2**32 - 1 else None
    return None


def resolve_user(user: str, passwd: bytes | None, group: bytes | None) -> User:
    """Resolve an image ``User`` (``name|uid[:group|gid]``) like Docker does.

    *passwd* and *group* are the contents of the rootfs' ``/etc/passwd`` and
    ``/etc/group`` (``None`` when absent).  A numeric uid need not exist in passwd; its
    primary gid is taken from passwd when listed there, else 0.  Supplementary groups are
    those listing the user name as a member.
    """
    spec = user.strip()
    user_part, sep, group_part = spec.partition(":")
    if sep and not group_part:
        raise BadInputError(f"image config User {user!r}: expected a group after ':', seen nothing")
    users = _parse_db(passwd, 7)
    groups = _parse_db(group, 4)

    name: str | None = None
    home: str | None = None
    uid = 0
    gid: int | None = None
    if user_part:
        entry = None
        numeric = _id(user_part)
        if numeric is not None:
            uid = numeric
            entry = next((u for u in users if _id(u[2]) == uid), None)
        else:
            entry = next((u for u in users if u[0] == user_part), None)
            if entry is None:
                where = (
                    "in the rootfs /etc/passwd" if passwd is not None else "(the rootfs has no /etc/passwd)"
                )
                raise BadInputError(f"image config User {user!r}: expected a user name {where}, seen none")
            parsed = _id(entry[2])
            if parsed is None:
                raise BadInputError(
                    f"/etc/passwd entry {user_part!r}: expected a numeric uid, seen {entry[2]!r}"
                )
            uid = parsed
        if entry is not None:
            name, home, gid = entry[0], entry[5] or None, _id(entry[3])
    elif not sep:
        entry = next((u for u in users if _id(u[2]) == 0), None)
        if entry is not None:
            name, home = entry[0], entry[5] or None

    if group_part:
        numeric = _id(group_part)
        if numeric is not None:
            gid = numeric
        else:
            g = next((g for g in groups if g[0] == group_part), None)
            if g is None:
                where = "in the rootfs /etc/group" if group is not None else "(the rootfs has no /etc/group)"
                raise BadInputError(f"image config User {user!r}: expected a group name {where}, seen none")
            gid = _id(g[2])
            if gid is None:
                raise BadInputError(f"/etc/group entry {group_part!r}: expected a numeric gid, seen {g[2]!r}")
    if gid is None:
        gid = 0

    extra: list[int] = []
    # an explicit group replaces the user's groups, as in Docker
    if name is not None and not group_part:
        for g in groups:
            members = [m.strip() for m in g[3].split(",")]
            g_id = _id(g[2])
            if name in members and g_id is not None and g_id != gid and g_id not in extra:
                extra.append(g_id)
    return User(uid, gid, tuple(extra), home)


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInputError(f"image config {what}: expected an array of strings, seen {value!r:.80}")
    return list(value)


def _env(image_env: Sequence[str], terminal: bool, home: str | None) -> list[str]:
    env = list(image_env)
    names = {e.partition("=")[0] for e in env}
    if "PATH" not in names:
        env.insert(0, DEFAULT_PATH)
    if terminal and "TERM" not in names:
        env.append("TERM=xterm")
    if "HOME" not in names:
        env.append(f"HOME={home or '/'}")
    return env


def _mounts(rootless: bool) -> list[dict[str, Any]]:
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        devpts.append("gid=5")  # the tty group; unmapped in a rootless user namespace
    sys_mount: dict[str, Any] = {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }
    if rootless:
        # sysfs cannot be mounted from a user namespace that does not own the netns' parent
        sys_mount = {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {
            "destination": "/dev/shm",  # noqa: S108 - inside the container
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        sys_mount,
        # with a cgroup namespace this shows the container its own cgroup only
        *([] if rootless else [dict(_CGROUP_MOUNT)]),
    ]


def runtime_spec(
    config: ImageConfig,
    rootfs: str = "rootfs",
    args: Sequence[str] | None = None,
    *,
    hostname: str = "layerseal",
    terminal: bool = False,
    rootless: bool | None = None,
    passwd: bytes | None = None,
    group: bytes | None = None,
    readonly_rootfs: bool = False,
    pids_limit: int | None = None,
    memory_limit: int | None = None,
    seccomp: bool = True,
) -> dict[str, Any]:
    """The ``config.json`` of a bundle running *config*'s command in *rootfs*.

    ``process.args`` is the image Entrypoint followed by *args* when given (even empty),
    else by the image Cmd.  *passwd*/*group* are the rootfs' user databases, needed only
    when the image User names a user or group.  *rootless* defaults to "not running as
    root" and adds a user namespace mapping the container user to the caller.
    *pids_limit* defaults to :data:`DEFAULT_PIDS_LIMIT` (none when rootless), *memory_limit*
    (bytes) to none; *seccomp* False leaves the default profile out (for comparisons).
    """
    rc = config.runtime
    entrypoint = _str_list(rc.get("Entrypoint"), "Entrypoint")
    cmd = list(args) if args is not None else _str_list(rc.get("Cmd"), "Cmd")
    process_args = entrypoint + cmd
    if not process_args:
        raise BadInputError(
            "image config: expected an Entrypoint or Cmd (or command arguments), seen neither"
        )
    image_env = _str_list(rc.get("Env"), "Env")
    workdir = rc.get("WorkingDir") or "/"
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise BadInputError(f"image config WorkingDir: expected an absolute path, seen {workdir!r}")
    user_text = rc.get("User") or ""
    if not isinstance(user_text, str):
        raise BadInputError(f"image config User: expected a string, seen {type(user_text).__name__}")
    user = resolve_user(user_text, passwd, group)
    if rootless is None:
        rootless = os.geteuid() != 0

    proc_user: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        proc_user["additionalGids"] = list(user.additional_gids)
    caps = list(DEFAULT_CAPABILITIES)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "cgroup")]
    limits = (("--pids-limit", pids_limit), ("--memory", memory_limit))
    for flag, value in limits:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BadInputError(f"{flag}: expected a positive number, seen {value!r}")
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    resources["pids"] = {"limit": pids_limit or DEFAULT_PIDS_LIMIT}
    if memory_limit is not None:
        resources["memory"] = {"limit": memory_limit}
    linux: dict[str, Any] = {
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if seccomp:
        linux["seccomp"] = default_profile(caps)
    if rootless:
        asked = [flag for flag, value in limits if value is not None]
        if asked:
            raise BadInputError(
                f"{' and '.join(asked)}: expected to run as root (cgroup limits need privilege), "
                f"seen uid {os.geteuid()}: run as root or leave the limit out"
            )
        namespaces.append({"type": "user"})
        # one id is all an unprivileged caller owns: map the container user onto it
        linux["uidMappings"] = [{"containerID": user.uid, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": user.gid, "hostID": os.getegid(), "size": 1}]
        # cgroup rules need privilege; rootless runc refuses or ignores them
        del linux["resources"]
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": proc_user,
            "args": process_args,
            "env": _env(image_env, terminal, user.home),
            "cwd": workdir,
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE_LIMIT, "soft": NOFILE_LIMIT}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "hostname": hostname,
        "mounts": _mounts(rootless),
        "linux": linux,
    }
    return spec


def spec_summary(spec: Mapping[str, Any]) -> str:
    """One line describing what a spec runs, for logs and messages."""
    proc = spec.get("process", {})
    user = proc.get("user", {})
    return f"{' '.join(proc.get('args', []))!r} as {user.get('uid')}:{user.get('gid')} in {proc.get('cwd')}"
