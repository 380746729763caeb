"""Every environment variable layerseal reads, for ``layerseal --help`` (the README's table
lists the same; ``tests/unit/cli/test_environment_documented.py`` keeps both complete)."""

from __future__ import annotations

VARIABLES: tuple[tuple[str, str], ...] = (
    ("LAYERSEAL_BROKER_DB", "broker serve/migrate/backup/restore/audit: --db"),
    ("LAYERSEAL_MASTER_KEY_FILE", "the same: --master-key-file"),
    ("LAYERSEAL_MASTER_KEY", "the same: the master key itself (base64 of 32 bytes)"),
    ("LAYERSEAL_PKCS11_MODULE", "--master-key pkcs11:...: the PKCS#11 library"),
    ("LAYERSEAL_BROKER_URL", "broker admin commands: --url (default http://127.0.0.1:8080)"),
    ("LAYERSEAL_BROKER_TOKEN", "broker admin commands: the API token (instead of --token-file)"),
    ("LAYERSEAL_KBS_TOKEN", "copy, layer add, keys: the publisher token for kbs: (--kbs-token)"),
    ("LAYERSEAL_STORE", "pull, run, store: --store"),
    ("LAYERSEAL_SNAPSHOTS", "pull, run, store: --snapshots"),
    ("LAYERSEAL_SIM_PLATFORM", "pull, run, keyprovider, containerd: --sim-platform"),
    ("LAYERSEAL_SPOOL_DIR", "containerd: --spool-dir"),
    ("LAYERSEAL_KBS_URL", "keyprovider, containerd: the broker (--kbs)"),
    ("LAYERSEAL_KBS_TOKEN_FILE", "keyprovider: the publisher token file"),
    ("LAYERSEAL_KBS_CACERT", "keyprovider: CA bundle of the broker"),
    ("LAYERSEAL_KBS_REPOSITORY", "keyprovider: repository of new keys"),
    ("LAYERSEAL_KBS_TENANT", "keyprovider: tenant of new keys"),
    ("LAYERSEAL_TEE", "keyprovider: the attester"),
    ("LAYERSEAL_KEYPROVIDER_CONFIG", "keyprovider: settings file"),
    ("LAYERSEAL_KEYPROVIDER_CACHE_DIR", "keyprovider: key cache directory"),
    ("LAYERSEAL_TEE_SYSROOT", "pull, run, tee, keyprovider: read TEE interfaces below this root"),
    ("LAYERSEAL_TSM_PRIVLEVEL", "the same, SEV-SNP: the VMPL asked of configfs-tsm"),
    ("LAYERSEAL_TPM_TCTI", "the same, Azure vTPM: the TPM (tpm2-tools TCTI)"),
    ("LAYERSEAL_AZ_VCEK", "the same, az-snp-vtpm: the VCEK as a file"),
    ("LAYERSEAL_AZ_IMDS", "the same, Azure: the metadata service URL"),
    ("LAYERSEAL_DEMO_DIR", "make demo: keep its working directory here"),
)
# set by layerseal for its own child processes, not by users
INTERNAL = ("LAYERSEAL_BROKER_WORKER_OPTIONS",)


def epilog() -> str:
    width = max(len(name) for name, _ in VARIABLES)
    lines = [f"  {name.ljust(width)}  {meaning}" for name, meaning in VARIABLES]
    return "environment (each command's --help says which it reads):\n" + "\n".join(lines)
