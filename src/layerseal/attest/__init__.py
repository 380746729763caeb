"""Attestation: evidence producers (attesters) and verifiers per TEE kind, report-data binding.

Verifiers are pure: evidence bytes and the expected report data in, verified claims out.
``sim`` is a simulated TEE with a signing platform key; ``sample`` is Trustee's unsigned
development TEE, accepted for protocol compatibility and refused by the default policy.
"""
