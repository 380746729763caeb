"""OCI distribution registry client: references, auth, retries, resumable verified transfers."""

from layerseal.registry.client import MANIFEST_ACCEPT, RegistryClient
from layerseal.registry.credentials import Credentials, resolve_credentials
from layerseal.registry.options import RegistryOptions
from layerseal.registry.reference import RegistryReference, parse_reference
from layerseal.registry.retry import RetryPolicy
from layerseal.registry.transport import (
    RegistryDestination,
    RegistrySource,
    open_registry_destination,
    open_registry_source,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "Credentials",
    "RegistryClient",
    "RegistryDestination",
    "RegistryOptions",
    "RegistryReference",
    "RegistrySource",
    "RetryPolicy",
    "open_registry_destination",
    "open_registry_source",
    "parse_reference",
    "resolve_credentials",
]
