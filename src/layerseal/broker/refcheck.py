"""What a policy may name: known claims, existing reference-value sets, well-formed measurements.

Pure checks (no I/O) run when a policy or reference values are stored, so a misspelt claim
(``mesurement``), a misspelt set (``refvalues:allowed-measurement``) or a truncated
measurement is refused at ``policy set`` / ``refvalues add`` instead of silently denying
every release later.  Claim names follow ``Claims.as_tree`` and each verifier's details.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from layerseal.broker.policy import DEFAULT_POLICY, Condition, Policy
from layerseal.errors import BadInputError

COMMON_CLAIMS = ("tee", "measurement", "svn", "debug")
# free-form subtrees: their content is whatever the workload's init-data / extra evidence says
OPEN_CLAIMS = ("init_data", "additional")
_SNP_FIELDS = [
    "measurement",
    "host_data",
    "report_data",
    "policy",
    "debug",
    "guest_svn",
    "vmpl",
    "version",
    "family_id",
    "image_id",
    "id_key_digest",
    "author_key_digest",
    "platform_info",
    "chip_id",
    "reported_tcb",
    "committed_tcb",
    "current_tcb",
    "launch_tcb",
    "generation",
    "signing_key",
    "signer",
]
TEE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "sim": ("measurement", "svn", "debug", "platform"),
    "sample": ("svn",),
    "snp": tuple(_SNP_FIELDS),
    "az-snp-vtpm": (*_SNP_FIELDS, "snp_report_data", "pcrs", "tpm_quote"),
    "tdx": tuple(
        [
            "quote_version",
            "mr_td",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "mr_config_id",
            "mr_owner",
            "mr_owner_config",
            "mr_seam",
            "mr_signer_seam",
            "td_attributes",
            "xfam",
            "tee_tcb_svn",
            "report_data",
            "debug",
            "fmspc",
            "tcb_status",
            "collateral_expired",
            "qe_tcb_status",
            "tdx_module_tcb_status",
            "tee_tcb_svn2",
            "mr_servicetd",
        ]
    ),
}
# claims holding a digest of code or configuration: compared against hex reference values
_DIGEST_FIELDS = {"measurement", "mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "host_data", "mr_config_id"}
# SHA-256 (PCRs, host data), SHA-384 (SNP and TDX measurements, the sim default), SHA-512
DIGEST_HEX_LENGTHS = (64, 96, 128)
_HEX = re.compile(r"^[0-9a-f]+$")


def check_claim(claim: str, what: str) -> None:
    """Refuse a claim path no verifier produces."""
    segments = claim.split(".")
    head = segments[0]
    if head in OPEN_CLAIMS:
        return
    if head in COMMON_CLAIMS:
        if len(segments) > 1:
            raise BadInputError(f"{what}: expected {head!r} alone (it is not an object), seen {claim!r}")
        return
    fields = TEE_FIELDS.get(head)
    if fields is None:
        known = [*COMMON_CLAIMS, *OPEN_CLAIMS, *(f"{t}.<field>" for t in TEE_FIELDS)]
        raise BadInputError(f"{what}: expected a known claim ({', '.join(known)}), seen {claim!r}")
    if len(segments) > 1 and segments[1] not in fields:
        raise BadInputError(f"{what}: expected a {head} claim of {list(fields)}, seen {claim!r}")


def is_digest_claim(claim: str | None) -> bool:
    if claim is None:
        return False
    segments = claim.split(".")
    return segments[-1] in _DIGEST_FIELDS or (len(segments) == 3 and segments[1] == "pcrs")


def check_digests(values: Iterable[object], what: str) -> None:
    """Hex digests of a digest length, all of one length (a truncated one stands out)."""
    lengths: set[int] = set()
    for value in values:
        text = str(value)
        if not _HEX.match(text) or len(text) not in DIGEST_HEX_LENGTHS:
            shown = text if len(text) <= 24 else text[:21] + "..."
            raise BadInputError(
                f"{what}: expected lowercase hex of {'/'.join(map(str, DIGEST_HEX_LENGTHS))} digits "
                f"(a measurement), seen {shown!r} ({len(text)} characters)"
            )
        lengths.add(len(text))
    if len(lengths) > 1:
        raise BadInputError(f"{what}: expected measurements of one length, seen lengths {sorted(lengths)}")


def _located(policy: Policy) -> Iterable[tuple[str, Condition]]:
    for i, group in enumerate(policy.groups):
        for j, cond in enumerate(group):
            yield f"policy anyOf[{i}].allOf[{j}]", cond


def digest_sets(policies: Iterable[Policy]) -> set[str]:
    """Names of the reference-value sets compared against digest claims (the default policy's too)."""
    names: set[str] = set()
    for pol in (*policies, DEFAULT_POLICY):
        for _, cond in _located(pol):
            if cond.refvalues is not None and is_digest_claim(cond.claim):
                names.add(cond.refvalues)
    return names


def check_policy(policy: Policy, refvalues: Mapping[str, Sequence[str]]) -> None:
    """Claims known, referenced sets existing, digest operands and sets well-formed."""
    for where, cond in _located(policy):
        if cond.claim is None:
            continue  # raw CEL: checked by the compiler only
        check_claim(cond.claim, f"{where}.claim")
        if cond.refvalues is not None:
            if cond.refvalues not in refvalues:
                known = sorted(refvalues) or ["none yet: add them with 'broker refvalues add'"]
                raise BadInputError(
                    f"{where}: reference values {cond.refvalues!r}: expected an existing set of the "
                    f"tenant ({', '.join(known)}), seen none"
                )
            if is_digest_claim(cond.claim):
                check_digests(refvalues[cond.refvalues], f"reference values {cond.refvalues!r}")
        elif is_digest_claim(cond.claim) and isinstance(cond.operand, list):
            check_digests(cond.operand, f"{where} operand")


def check_refvalues(name: str, values: Sequence[str], digest_set_names: Collection[str]) -> None:
    """Values added to a set a policy compares with a digest claim must be digests."""
    if name in digest_set_names:
        check_digests(values, f"reference values {name!r}")
