"""Run bundles built from image configs with real runc (and bubblewrap) on a busybox rootfs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helpers.rootfs import busybox_rootfs, static_busybox
from layerseal.engine.bundle import runtime_spec
from layerseal.engine.runtime import (
    CommandNotRunError,
    list_containers,
    read_user_db,
    run_bundle,
    write_bundle,
)
from layerseal.image.config import ImageConfig

pytestmark = pytest.mark.integration

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\naudio:x:29:app\n"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require("runc")
    if static_busybox() is None:
        pytest.fail("a static busybox is not installed: run 'make test' (Debian package busybox-static)")
    if os.geteuid() != 0:
        pytest.skip("these tests run runc as root; rootless runc is not exercised here")


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run 'make test', which installs the Debian packages")


def make_bundle(tmp_path: Path, config: dict[str, Any], args: list[str] | None = None) -> Path:
    bundle = tmp_path / "bundle"
    rootfs = busybox_rootfs(bundle / "rootfs", passwd=PASSWD, group=GROUP)
    passwd, group = read_user_db(rootfs)
    image = ImageConfig({"architecture": "amd64", "os": "linux", "config": config})
    write_bundle(bundle, runtime_spec(image, args=args, passwd=passwd, group=group))
    return bundle


def runc_ids() -> list[str]:
    out = subprocess.run(["runc", "list", "--quiet"], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_echo_hello_is_captured_and_container_deleted(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path, {"Entrypoint": ["/bin/busybox"], "Cmd": ["echo", "nope"]}, ["echo", "hello"]
    )
    out, err = io.BytesIO(), io.BytesIO()
    status = run_bundle(bundle, container_id="layerseal-test-hello", runtime="runc", stdout=out, stderr=err)
    assert status == 0
    assert out.getvalue() == b"hello\n"
    assert err.getvalue() == b""
    assert "layerseal-test-hello" not in runc_ids()
    assert "layerseal-test-hello" not in list_containers("runc")
    # the bundle is the caller's: left in place
    assert (bundle / "config.json").is_file() and (bundle / "rootfs" / "bin" / "busybox").is_file()


def test_exit_status_and_stderr_are_propagated(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"Cmd": ["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 7"]})
    out, err = io.StringIO(), io.StringIO()
    assert run_bundle(bundle, container_id="layerseal-test-exit7", stdout=out, stderr=err) == 7
    assert out.getvalue() == "to-out\n"
    assert err.getvalue() == "to-err\n"
    assert "layerseal-test-exit7" not in runc_ids()


def test_output_to_real_files(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"Cmd": ["/bin/busybox", "echo", "into a file"]})
    with open(tmp_path / "out.txt", "wb") as out:
        assert run_bundle(bundle, stdout=out) == 0
    assert (tmp_path / "out.txt").read_bytes() == b"into a file\n"


def test_image_user_env_workdir_and_isolation(tmp_path: Path) -> None:
    script = 'echo "$(id -u):$(id -g):$(id -G)"; pwd; echo "$GREETING"; hostname; cat /proc/net/dev'
    bundle = make_bundle(
        tmp_path,
        {"Cmd": ["/bin/sh", "-c", script], "User": "app", "WorkingDir": "/tmp", "Env": ["GREETING=hi there"]},
    )
    out = io.StringIO()
    assert run_bundle(bundle, stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "1000:1000:1000 29"
    assert lines[1:4] == ["/tmp", "hi there", "layerseal"]
    interfaces = [line.split(":")[0].strip() for line in lines[4:] if ":" in line]
    assert interfaces == ["lo"]


def test_missing_command_raises_and_cleans_up(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, {"Cmd": ["/bin/not-there"]})
    with pytest.raises(CommandNotRunError, match="not-there") as info:
        run_bundle(bundle, container_id="layerseal-test-missing", stderr=io.StringIO())
    assert "layerseal-test-missing" in str(info.value)
    assert info.value.container_status == 127  # as podman and shells report a missing command
    assert "layerseal-test-missing" not in runc_ids()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from layerseal.engine.runtime import run_bundle
    try:
        run_bundle(Path(sys.argv[1]), container_id=sys.argv[2], runtime="runc")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    """
)


def test_keyboard_interrupt_deletes_the_container(tmp_path: Path) -> None:
    cid = "layerseal-test-interrupt"
    bundle = make_bundle(
        tmp_path,
        {"Cmd": ["/bin/sh", "-c", "trap 'echo got TERM; exit 143' TERM; echo started; sleep 300 & wait"]},
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(bundle), cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"started\n"  # the container is running
        assert cid in runc_ids()
        child.send_signal(signal.SIGINT)  # only to the Python process: runc is not told
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True, check=False)
    assert child.returncode == 130, err.decode()
    assert b"interrupted" in err
    assert out == b"got TERM\n"  # runc forwarded our SIGTERM: the container could shut down
    assert cid not in runc_ids()


def test_bwrap_fallback_runs_the_same_bundle(tmp_path: Path) -> None:
    require("bwrap")
    bundle = make_bundle(tmp_path, {"Cmd": ["/bin/sh", "-c", "echo hello from $(hostname); exit 3"]})
    out = io.StringIO()
    assert run_bundle(bundle, runtime="bwrap", stdout=out) == 3
    assert out.getvalue() == "hello from layerseal\n"
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"][0] == "/bin/sh"


def _run_script(tmp_path: Path, script: str, **spec_args: Any) -> tuple[int, str, str]:
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        busybox_rootfs(bundle / "rootfs")
    image = ImageConfig(
        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh", "-c", script]}}
    )
    write_bundle(bundle, runtime_spec(image, rootless=False, **spec_args))
    out, err = io.StringIO(), io.StringIO()
    status = run_bundle(bundle, runtime="runc", stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_default_seccomp_profile_forbids_what_it_should(tmp_path: Path) -> None:
    # creating a user namespace needs no capability: only the profile stops it
    script = "unshare -U true && echo allowed"
    assert _run_script(tmp_path, script, seccomp=False)[:2] == (0, "allowed\n")
    status, out, err = _run_script(tmp_path, script)
    assert (status, out) == (1, "")
    assert "Operation not permitted" in err
    # ordinary programs are unaffected, threads and fork included
    assert _run_script(tmp_path, "echo $(echo sub) | cat; sleep 0 & wait; echo done")[:2] == (
        0,
        "sub\ndone\n",
    )


def test_pids_limit_holds(tmp_path: Path) -> None:
    script = "i=0; while [ $i -lt 20 ]; do sleep 2 & i=$((i+1)); done; echo started $i"
    assert _run_script(tmp_path, script)[:2] == (0, "started 20\n")  # podman's default, 2048, is far
    status, out, err = _run_script(tmp_path, script, pids_limit=8)
    assert status != 0 and "started" not in out
    assert "can't fork: Resource temporarily unavailable" in err


def test_cgroup_namespace_and_limits_visible_inside(tmp_path: Path) -> None:
    script = (
        "readlink /proc/self/ns/cgroup; grep -c ':/$' /proc/self/cgroup; "
        # cgroup v1 layout, else v2
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"
    )
    status, out, err = _run_script(tmp_path, script, pids_limit=10, memory_limit=64 << 20)
    assert status == 0, err
    ns, roots, pids_max, memory_max = out.split()
    assert ns.startswith("cgroup:[") and ns != os.readlink("/proc/self/ns/cgroup")
    # every hierarchy's path is the namespace root: the host's cgroup layout is hidden
    assert int(roots) == len(Path("/proc/self/cgroup").read_text().splitlines())
    assert (pids_max, memory_max) == ("10", str(64 << 20))


ROOTLESS_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from layerseal.engine.bundle import runtime_spec
    from layerseal.engine.runtime import list_containers, run_bundle, write_bundle
    from layerseal.image.config import ImageConfig
    bundle = Path(sys.argv[1])
    config = {"Cmd": ["/bin/sh", "-c", "echo uid=$(id -u); unshare -U true 2>/dev/null || echo seccomp; exit 5"]}
    write_bundle(bundle, runtime_spec(ImageConfig({"architecture": "amd64", "os": "linux", "config": config})))
    status = run_bundle(bundle, runtime="runc", container_id="layerseal-test-rootless")
    print("status", status, "left", list(list_containers("runc")), flush=True)
    """
)


def test_rootless_runc_as_an_unprivileged_user(tmp_path: Path) -> None:
    """As nobody, without XDG_RUNTIME_DIR: a user namespace maps the container's root onto
    the caller, runc keeps its state in a private directory, the profile still applies."""
    require("setpriv")
    nobody = 65534
    work = Path(tempfile.mkdtemp(prefix="layerseal-rootless-", dir="/tmp"))  # nobody cannot enter tmp_path
    try:
        busybox_rootfs(work / "bundle" / "rootfs")
        for path in (work, *work.rglob("*")):
            os.lchown(path, nobody, nobody)
        work.chmod(0o755)
        src = Path(__file__).resolve().parents[2] / "src"
        r = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody}",
                f"--regid={nobody}",
                "--clear-groups",
                "--",
                "/usr/bin/python3",
                "-c",
                ROOTLESS_CHILD,
                str(work / "bundle"),
            ],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(src), "TMPDIR": str(work)},
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["uid=0", "seccomp", "status 5 left []"]
        state = work / f"layerseal-runc-{nobody}"
        assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(work, ignore_errors=True)
