"""layerseal.wire: the bottom layer of small wire helpers every package shares (pure).

:mod:`layerseal.wire.b64` decodes base64 with a checked alphabet and one-line errors,
:mod:`layerseal.wire.jsonload` reads JSON documents (``loads``, ``loads_object``) with
depth, surrogate and number checks, and :mod:`layerseal.wire.jcs` is RFC 8785 canonical
JSON (RCAR report data, the audit chain).
Imports nothing but :mod:`layerseal.errors`.
"""
