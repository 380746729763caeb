"""The containerd configuration that makes layerseal its layer decryption stream processor (pure).

The processor ids are imgcrypt's (``io.containerd.ocicrypt.decoder.v1.tar`` and
``...tar.gzip`` are the ids imgcrypt and the CRI plugin attach the decrypt payload to);
``tar.zstd`` gets no payload from them, so that processor finds the layer's descriptor
in the content store.  Output is containerd's version 2 TOML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from layerseal.image import mediatypes as mt

#: (processor id, encrypted media type accepted, media type returned)
PROCESSORS = (
    ("io.containerd.ocicrypt.decoder.v1.tar.gzip", mt.OCI_LAYER_GZIP),
    ("io.containerd.ocicrypt.decoder.v1.tar.zstd", mt.OCI_LAYER_ZSTD),
    ("io.containerd.ocicrypt.decoder.v1.tar", mt.OCI_LAYER_TAR),
)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string uses JSON's escapes for these characters


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def stream_processors(path: str, args: Sequence[str], env: Sequence[str] = ()) -> str:
    """The ``[stream_processors]`` table running ``path args...`` for every encrypted layer type."""
    lines = ["[stream_processors]"]
    for ident, plain in PROCESSORS:
        lines += [
            f"  [stream_processors.{_toml_str(ident)}]",
            f"    accepts = {_toml_list([mt.encrypted_type(plain)])}",
            f"    returns = {_toml_str(plain)}",
            f"    path = {_toml_str(path)}",
            f"    args = {_toml_list(args)}",
        ]
        if env:
            lines.append(f"    env = {_toml_list(env)}")
    return "\n".join(lines) + "\n"


def cri_settings() -> str:
    """The CRI plugin settings a Kubernetes node needs (containerd 1.5-1.7 plugin name)."""
    return (
        '[plugins."io.containerd.grpc.v1.cri".image_decryption]\n'
        "  # the CRI passes each layer's descriptor (and an empty key set) to the processor\n"
        '  key_model = "node"\n'
    )


def config_text(path: str, args: Sequence[str], env: Sequence[str] = (), *, cri: bool = True) -> str:
    head = (
        "# layerseal: containerd decrypts encrypted image layers with 'layerseal containerd decode'.\n"
        "# Add to containerd's config.toml (version = 2) and restart containerd.\n"
    )
    text = head + stream_processors(path, args, env)
    if cri:
        text += "\n# Kubernetes nodes (CRI plugin):\n" + cri_settings()
    return text
