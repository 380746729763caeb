"""The default seccomp profile: podman/containers-common semantics, generated as data."""

from __future__ import annotations

from typing import Any

from layerseal.engine.seccomp import ENOSYS, EPERM, default_profile


def _rules(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def _allowed(profile: dict[str, Any]) -> set[str]:
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
        for n in r["names"]
    }


def test_default_deny_with_eperm_and_native_arches_first() -> None:
    p = default_profile(machine="x86_64")
    assert (p["defaultAction"], p["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", EPERM)
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert default_profile(machine="aarch64")["architectures"][0] == "SCMP_ARCH_AARCH64"
    assert "arch_prctl" in _allowed(p) and "arch_prctl" not in _allowed(default_profile(machine="aarch64"))


def test_everyday_calls_allowed_dangerous_ones_not() -> None:
    allowed = _allowed(default_profile(machine="x86_64"))
    for name in (
        "read",
        "write",
        "openat",
        "execve",
        "mmap",
        "futex",
        "socket",
        "getrandom",
        "statx",
        "rseq",
    ):
        assert name in allowed
    for name in (
        "mount",
        "unshare",
        "setns",
        "ptrace",
        "kexec_load",
        "init_module",
        "bpf",
        "keyctl",
        "add_key",
        "reboot",
        "swapon",
        "chroot",
        "open_by_handle_at",
        "userfaultfd",
    ):
        assert name not in allowed, name


def test_capabilities_unlock_what_they_guard() -> None:
    assert "chroot" in _allowed(default_profile(["CAP_SYS_CHROOT"], machine="x86_64"))
    admin = default_profile(["CAP_SYS_ADMIN"], machine="x86_64")
    assert {"mount", "unshare", "setns", "clone", "clone3"} <= _allowed(admin)
    assert not _rules(admin, "clone3")[0].get("errnoRet")


def test_clone_without_namespace_flags_and_clone3_enosys() -> None:
    p = default_profile(machine="x86_64")
    (clone,) = _rules(p, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = _rules(p, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", ENOSYS)
    assert _rules(default_profile(machine="s390x"), "clone")[0]["args"][0]["index"] == 1


def test_personality_values_each_own_rule() -> None:
    rules = _rules(default_profile(machine="x86_64"), "personality")
    # the conditions of one rule are ANDed: one value per rule
    assert sorted(r["args"][0]["value"] for r in rules) == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(len(r["args"]) == 1 for r in rules)
