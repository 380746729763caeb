"""Values the command parsers show in ``--help``, spelled out here rather than imported from
the modules that own them: importing those (dataclasses, hashlib, the attesters) would cost
``pull --help`` and ``tee --help`` a third of their start.  ``tests/unit/cli/test_cli_startup.py``
keeps each equal to its owner's."""

from __future__ import annotations

#: layerseal.attest.attesters.TEE_CHOICES
TEE_CHOICES = ("auto", "snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "sgx", "sim")
#: layerseal.attest.binding.HASH_ALGORITHMS
HASH_ALGORITHMS = ("sha256", "sha384", "sha512")
#: layerseal.engine.limits.DEFAULT_MAX_LAYER_SIZE, DEFAULT_MAX_IMAGE_SIZE, DEFAULT_MAX_ENTRIES
DEFAULT_MAX_LAYER_SIZE = 32 << 30
DEFAULT_MAX_IMAGE_SIZE = 64 << 30
DEFAULT_MAX_ENTRIES = 5_000_000
