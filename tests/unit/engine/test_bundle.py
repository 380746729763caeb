"""Runtime spec generation from image configs: command, env, workdir, user, defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from layerseal.engine.bundle import DEFAULT_PATH, User, resolve_user, runtime_spec
from layerseal.engine.runtime import (
    Runtime,
    _runtime_errors,
    find_runtime,
    read_rootfs_file,
    read_user_db,
    run_bundle,
    write_bundle,
)
from layerseal.errors import BadInputError, NotFoundError
from layerseal.image.config import ImageConfig

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:App:/home/app:/bin/sh
broken
web:x:33:33:www:/var/www:/bin/false
"""
GROUP = b"""root:x:0:
tty:x:5:
web:x:33:
app:x:1000:
audio:x:29:app,web
video:x:44:web, app
staff:x:50:
"""


def cfg(**runtime: Any) -> ImageConfig:
    return ImageConfig({"architecture": "amd64", "os": "linux", "config": runtime})


def spec(config: ImageConfig, **kw: Any) -> dict[str, Any]:
    kw.setdefault("rootless", False)
    return runtime_spec(config, **kw)


@pytest.mark.parametrize(
    ("runtime", "args", "expected"),
    [
        ({"Cmd": ["/bin/sh", "-c", "echo hi"]}, None, ["/bin/sh", "-c", "echo hi"]),
        ({"Entrypoint": ["/app"]}, None, ["/app"]),
        (
            {"Entrypoint": ["/app", "--serve"], "Cmd": ["--port", "80"]},
            None,
            ["/app", "--serve", "--port", "80"],
        ),
        ({"Entrypoint": ["/app"], "Cmd": ["--port", "80"]}, ["--debug"], ["/app", "--debug"]),
        ({"Entrypoint": ["/app"], "Cmd": ["--port", "80"]}, [], ["/app"]),
        ({"Cmd": ["/bin/sh"]}, ["/bin/busybox", "echo", "x"], ["/bin/busybox", "echo", "x"]),
        ({}, ["/bin/true"], ["/bin/true"]),
    ],
)
def test_process_args(runtime: dict[str, Any], args: list[str] | None, expected: list[str]) -> None:
    assert spec(cfg(**runtime), args=args)["process"]["args"] == expected


@pytest.mark.parametrize("runtime", [{}, {"Cmd": []}, {"Entrypoint": None, "Cmd": None}])
def test_no_command_is_an_error(runtime: dict[str, Any]) -> None:
    with pytest.raises(BadInputError, match="Entrypoint or Cmd"):
        spec(cfg(**runtime))
    with pytest.raises(BadInputError, match="Entrypoint or Cmd"):
        spec(cfg(**runtime), args=[])


def test_malformed_cmd_is_an_error() -> None:
    with pytest.raises(BadInputError, match="Cmd"):
        spec(cfg(Cmd="/bin/sh -c true"))


def test_env_keeps_image_values_and_defaults_path() -> None:
    env = spec(cfg(Cmd=["x"], Env=["FOO=bar", "EMPTY="]))["process"]["env"]
    assert env[0] == DEFAULT_PATH
    assert "FOO=bar" in env and "EMPTY=" in env
    assert "HOME=/" in env
    assert not any(e.startswith("TERM=") for e in env)

    env = spec(cfg(Cmd=["x"], Env=["PATH=/opt/bin", "HOME=/data"]), terminal=True)["process"]["env"]
    assert [e for e in env if e.startswith("PATH=")] == ["PATH=/opt/bin"]
    assert [e for e in env if e.startswith("HOME=")] == ["HOME=/data"]
    assert "TERM=xterm" in env


def test_workdir() -> None:
    assert spec(cfg(Cmd=["x"]))["process"]["cwd"] == "/"
    assert spec(cfg(Cmd=["x"], WorkingDir="/srv/app"))["process"]["cwd"] == "/srv/app"
    with pytest.raises(BadInputError, match="WorkingDir"):
        spec(cfg(Cmd=["x"], WorkingDir="relative"))


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", User(0, 0, (), "/root")),
        ("0", User(0, 0, (), "/root")),
        ("1000", User(1000, 1000, (29, 44), "/home/app")),
        ("4242", User(4242, 0)),
        ("4242:4243", User(4242, 4243)),
        ("app", User(1000, 1000, (29, 44), "/home/app")),
        ("web", User(33, 33, (29, 44), "/var/www")),
        ("app:staff", User(1000, 50, (), "/home/app")),
        ("app:7", User(1000, 7, (), "/home/app")),
        ("33:audio", User(33, 29, (), "/var/www")),
    ],
)
def test_resolve_user(user: str, expected: User) -> None:
    assert resolve_user(user, PASSWD, GROUP) == expected


def test_resolve_numeric_user_without_databases() -> None:
    assert resolve_user("12:34", None, None) == User(12, 34)
    assert resolve_user("", None, None) == User(0, 0)


@pytest.mark.parametrize(
    ("user", "passwd", "message"),
    [
        ("nobody", PASSWD, "user name in the rootfs /etc/passwd"),
        ("app", None, "the rootfs has no /etc/passwd"),
        ("app:nogroup", PASSWD, "group name in the rootfs /etc/group"),
        ("app:", PASSWD, "expected a group"),
    ],
)
def test_resolve_user_errors(user: str, passwd: bytes | None, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        resolve_user(user, passwd, GROUP)


def test_user_in_spec() -> None:
    s = spec(cfg(Cmd=["x"], User="app"), passwd=PASSWD, group=GROUP)
    assert s["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [29, 44]}
    assert "HOME=/home/app" in s["process"]["env"]
    s = spec(cfg(Cmd=["x"], User="5:6"))
    assert s["process"]["user"] == {"uid": 5, "gid": 6}


def test_defaults_match_runc_spec() -> None:
    s = spec(cfg(Cmd=["x"]), hostname="box")
    assert s["ociVersion"].startswith("1.0.")
    assert s["root"] == {"path": "rootfs", "readonly": False}
    assert s["hostname"] == "box"
    assert s["process"]["terminal"] is False
    assert s["process"]["noNewPrivileges"] is True
    caps = s["process"]["capabilities"]
    assert caps["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "ambient" not in caps
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    mounts = {m["destination"]: m for m in s["mounts"]}
    assert list(mounts) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup" and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert mounts["/dev"]["type"] == "tmpfs"
    assert "ro" in mounts["/sys"]["options"]
    linux = s["linux"]
    assert sorted(n["type"] for n in linux["namespaces"]) == [
        "cgroup",
        "ipc",
        "mount",
        "network",
        "pid",
        "uts",
    ]
    assert "/proc/kcore" in linux["maskedPaths"] and "/sys/firmware" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"] and "/proc/sysrq-trigger" in linux["readonlyPaths"]
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert linux["resources"]["pids"] == {"limit": 2048}  # podman's default
    assert "memory" not in linux["resources"]
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "uidMappings" not in linux


def test_limits_and_seccomp_switch() -> None:
    s = spec(cfg(Cmd=["x"]), pids_limit=64, memory_limit=64 << 20, seccomp=False)
    assert s["linux"]["resources"]["pids"] == {"limit": 64}
    assert s["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert "seccomp" not in s["linux"]
    with pytest.raises(BadInputError, match="--pids-limit"):
        spec(cfg(Cmd=["x"]), pids_limit=0)


def test_rootless_refuses_cgroup_limits_it_cannot_apply() -> None:
    s = spec(cfg(Cmd=["x"]), rootless=True)
    assert "resources" not in s["linux"]
    assert "cgroup" in [n["type"] for n in s["linux"]["namespaces"]]
    assert "/sys/fs/cgroup" not in [m["destination"] for m in s["mounts"]]
    with pytest.raises(BadInputError, match="--memory: expected to run as root"):
        spec(cfg(Cmd=["x"]), rootless=True, memory_limit=1 << 30)


def test_rootless_adds_user_namespace() -> None:
    s = spec(cfg(Cmd=["x"], User="7:8"), rootless=True)
    types = [n["type"] for n in s["linux"]["namespaces"]]
    assert "user" in types and "network" in types
    assert s["linux"]["uidMappings"][0]["containerID"] == 7
    assert s["linux"]["gidMappings"][0]["containerID"] == 8
    assert s["linux"]["uidMappings"][0]["size"] == 1
    assert "gid=5" not in {o for m in s["mounts"] for o in m.get("options", [])}


def test_custom_rootfs_and_readonly() -> None:
    s = spec(cfg(Cmd=["x"]), rootfs="/abs/root", readonly_rootfs=True)
    assert s["root"] == {"path": "/abs/root", "readonly": True}


def test_write_bundle_writes_config_atomically(tmp_path: Path) -> None:
    s = spec(cfg(Cmd=["/bin/true"]))
    write_bundle(tmp_path, s)
    assert json.loads((tmp_path / "config.json").read_text()) == s
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    with pytest.raises(NotFoundError, match="bundle directory"):
        write_bundle(tmp_path / "missing", s)


def test_read_user_db_never_follows_symlinks(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_bytes(PASSWD)
    host_file = tmp_path / "host-group"
    host_file.write_bytes(b"secret:x:1:\n")
    (rootfs / "etc" / "group").symlink_to(host_file)
    passwd, group = read_user_db(rootfs)
    assert passwd == PASSWD
    assert group is None

    other = tmp_path / "other"
    other.mkdir()
    (other / "etc").symlink_to(rootfs / "etc")
    assert read_user_db(other) == (None, None)
    with pytest.raises(BadInputError, match=r"\.\."):
        read_rootfs_file(rootfs, "../host-group")


def test_find_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NotFoundError, match="runc, crun, bwrap"):
        find_runtime()
    with pytest.raises(NotFoundError, match="'youki'"):
        find_runtime("youki")
    for name in ("bwrap", "crun"):
        fake = tmp_path / name
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    # crun comes before bwrap in the order of preference
    assert find_runtime() == Runtime("crun", str(tmp_path / "crun"))
    assert find_runtime("bwrap").kind == "bwrap"
    assert find_runtime(str(tmp_path / "crun")).kind == "crun"


def test_run_bundle_without_config(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"config\.json"):
        run_bundle(tmp_path)


@pytest.mark.parametrize(
    ("text", "seen"), [("{", "expected JSON, seen invalid JSON"), ("[]", "expected a JSON object, seen list")]
)
def test_run_bundle_with_a_config_that_is_no_object(tmp_path: Path, text: str, seen: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(BadInputError, match=rf"^bundle {tmp_path}/config\.json: {seen}"):
        run_bundle(tmp_path)


def test_runtime_log_lines_that_are_no_objects_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text(
        '{"level":"error","msg":"first"}\nnot json\n[1]\n{"level":"info","msg":"x"}\n{"level":"fatal","msg":"last"}\n'
    )
    assert _runtime_errors(log) == ["first", "last"]
    assert _runtime_errors(tmp_path / "none.json") == []
