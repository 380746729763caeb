"""A minimal container rootfs: the static busybox from Debian's busybox-static package."""

from __future__ import annotations

import shutil
from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def static_busybox() -> Path | None:
    """The host's busybox if it is statically linked (it must run without any library)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            head = path.read_bytes()[: 1 << 20]
            # a dynamic ELF names its interpreter; static-pie and static builds do not
            if b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head:
                return path
    return None


def busybox_rootfs(target: Path, *, passwd: bytes | None = None, group: bytes | None = None) -> Path:
    """Create *target* holding /bin/busybox, /bin/sh and the directories runtimes mount on."""
    busybox = static_busybox()
    if busybox is None:
        raise RuntimeError("a static busybox is needed: apt-get install busybox-static")
    (target / "bin").mkdir(parents=True)
    shutil.copy2(busybox, target / "bin" / "busybox")
    (target / "bin" / "sh").symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (target / d).mkdir(exist_ok=True)
    if passwd is not None:
        (target / "etc" / "passwd").write_bytes(passwd)
    if group is not None:
        (target / "etc" / "group").write_bytes(group)
    return target
