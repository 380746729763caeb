"""``layerseal containerd config``: valid TOML naming every encrypted layer type."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from layerseal.containerd.stanza import config_text
from layerseal.image import mediatypes as mt


def test_stanza_is_toml_with_three_processors() -> None:
    doc = tomllib.loads(config_text("/usr/bin/layerseal", ["containerd", "decode", "--kbs", 'http://x"y']))
    procs = doc["stream_processors"]
    assert set(procs) == {
        "io.containerd.ocicrypt.decoder.v1.tar.gzip",
        "io.containerd.ocicrypt.decoder.v1.tar.zstd",
        "io.containerd.ocicrypt.decoder.v1.tar",
    }
    returned = {p["returns"] for p in procs.values()}
    assert returned == {mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER_TAR}
    for p in procs.values():
        assert p["accepts"] == [p["returns"] + "+encrypted"]
        assert p["path"] == "/usr/bin/layerseal"
        assert p["args"] == ["containerd", "decode", "--kbs", 'http://x"y']
    assert doc["plugins"]["io.containerd.grpc.v1.cri"]["image_decryption"]["key_model"] == "node"


def test_cli_config_makes_paths_absolute_and_can_leave_out_cri(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "layerseal.cli.main", "containerd", "config", "--module", "--no-cri"]
    r = subprocess.run(
        [*cmd, "--decryption-keys-path", "keys", "--kbs", "http://127.0.0.1:9", "--tee", "sim"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    doc = tomllib.loads(r.stdout)
    assert "plugins" not in doc
    args = doc["stream_processors"]["io.containerd.ocicrypt.decoder.v1.tar"]["args"]
    assert args[:4] == ["-m", "layerseal.cli.main", "containerd", "decode"]
    assert args[args.index("--decryption-keys-path") + 1] == str(tmp_path / "keys")
    assert args[args.index("--kbs") + 1] == "http://127.0.0.1:9"
