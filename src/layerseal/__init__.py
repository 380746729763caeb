"""layerseal: container images that stay confidential until they run in an attested enclave."""

__version__ = "0.1.0"
