"""layerseal.wire: the bottom layer of small wire helpers every package shares (pure).

:mod:`layerseal.wire.b64` decodes base64 with a checked alphabet and one-line errors,
:mod:`layerseal.wire.jcs` is RFC 8785 canonical JSON (RCAR report data, the audit chain).
JSON documents are read with :func:`layerseal.image.jsonutil.loads` / ``loads_object``.
Imports nothing but :mod:`layerseal.errors`.
"""
