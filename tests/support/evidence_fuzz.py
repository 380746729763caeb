"""Structure-aware mutation of real TEE evidence (SNP, TDX, az-snp-vtpm) for fuzz tests.

Each generator takes a seeded :class:`random.Random` and yields :class:`Case` values: bit flips and truncations of the binary reports/quotes, JSON-level
changes of the evidence documents, and certificate mutations re-encoded as valid DER with
altered versions, algorithms, extensions, key types, names, dates and lengths
(:func:`mutate_cert`).  Nothing here depends on pytest.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh, dsa, ec, ed448, ed25519, rsa, x448, x25519

from support import der
from support.json_fuzz import mutate_json

DATA = Path(__file__).parents[1] / "data" / "tee"


class Case(NamedTuple):
    label: str
    evidence: bytes
    report_data: bytes
    #: a certificate the verifier must use lost its signature (its signed part changed)
    signed_cert_changed: bool = False


SIG_ALG_OIDS = [
    "1.2.840.113549.1.1.4",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.11",  # sha256WithRSAEncryption
    "1.2.840.113549.1.1.10",  # RSASSA-PSS
    "1.2.840.10045.4.1",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.2",  # ecdsa-with-SHA256
    "1.2.840.10045.4.3.3",  # ecdsa-with-SHA384
    "1.3.101.112",  # Ed25519
    "1.3.101.113",  # Ed448
    "2.16.840.1.101.3.4.3.2",  # dsa-with-sha256
    "1.2.643.7.1.1.3.2",  # GOST R 34.10-2012
    "1.2.3.4",  # unassigned
]
HASH_OIDS = [
    "2.16.840.1.101.3.4.2.1",
    "2.16.840.1.101.3.4.2.2",
    "1.3.14.3.2.26",
    "1.2.840.113549.2.5",
    "1.2.3",
]
KEY_ALG_OIDS = [
    "1.2.840.113549.1.1.1",  # rsaEncryption
    "1.2.840.10045.2.1",  # id-ecPublicKey
    "1.3.101.110",  # X25519
    "1.2.840.10040.4.1",  # DSA
    "1.2.840.113549.1.1.10",  # RSASSA-PSS key
    "1.2.3.4.5",
]
CURVE_OIDS = [
    "1.2.840.10045.3.1.1",
    "1.3.132.0.10",
    "1.3.132.0.34",
    "1.2.840.10045.3.1.7",
    "1.3.132.0.35",
    "1.2.9",
]
AMD_OIDS = [f"1.3.6.1.4.1.3704.1.3.{n}" for n in (1, 2, 3, 8, 9)] + [
    "1.3.6.1.4.1.3704.1.4",
    "1.3.6.1.4.1.3704.1.2",
]
STD_EXT_OIDS = [
    "2.5.29.15",
    "2.5.29.19",
    "2.5.29.17",
    "2.5.29.14",
    "2.5.29.35",
    "2.5.29.31",
    "2.5.29.37",
    "2.5.29.32",
]
SGX_OID = "1.2.840.113741.1.13.1"
NAME_ATTR_OIDS = ["2.5.4.3", "2.5.4.10", "2.5.4.6", "1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.25"]

JUNK = [
    b"",
    b"\x00",
    b"\xff",
    b"\x80",
    b"\x05\x00",
    b"\x02\x01\x80",
    b"\x30\x00",
    b"\x30\x80\x00\x00",
    bytes(70),
]


@functools.cache
def other_spkis() -> tuple[bytes, ...]:
    """SubjectPublicKeyInfo DER of keys of every type cryptography knows, plus broken ones."""
    keys: list[Any] = [
        rsa.generate_private_key(65537, 1024).public_key(),
        rsa.generate_private_key(3, 1024).public_key(),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ec.generate_private_key(ec.BrainpoolP384R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ed448.Ed448PrivateKey.generate().public_key(),
        x25519.X25519PrivateKey.generate().public_key(),
        x448.X448PrivateKey.generate().public_key(),
        dsa.generate_private_key(1024).public_key(),
    ]
    out = [
        k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in keys
    ]
    with warnings.catch_warnings():  # finite-field DH is deprecated, which is the point here
        warnings.simplefilter("ignore")
        params = dh.generate_parameters(2, 512)
    out.append(
        params.generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # an RSA key with an even modulus and exponent 1; an EC point not on the curve; explicit curve params
    bad_rsa = der.seq(der.integer((1 << 1023) + 2), der.integer(1)).encode()
    out.append(
        der.seq(der.seq(der.oid(KEY_ALG_OIDS[0]), der.Node(0x05)), der.Node(0x03, b"\x00" + bad_rsa)).encode()
    )
    out.append(
        der.seq(
            der.seq(der.oid(KEY_ALG_OIDS[1]), der.oid("1.3.132.0.34")),
            der.Node(0x03, b"\x00\x04" + bytes(96)),
        ).encode()
    )
    out.append(
        der.seq(
            der.seq(der.oid(KEY_ALG_OIDS[1]), der.seq(der.integer(1), der.seq(der.oid("1.2.840.10045.1.1")))),
            der.Node(0x03, b"\x00\x04" + bytes(64)),
        ).encode()
    )
    return tuple(out)


def _tbs(root: der.Node) -> der.Node:
    assert root.children is not None
    return root.children[0]


def _tbs_fields(root: der.Node) -> dict[str, der.Node]:
    """The named fields of a TBSCertificate (version is absent in a v1 certificate)."""
    kids = _tbs(root).children or []
    i = 0
    out: dict[str, der.Node] = {}
    if kids and kids[0].tag == 0xA0:
        out["version"] = kids[0]
        i = 1
    for name in ("serial", "signature", "issuer", "validity", "subject", "spki"):
        if i < len(kids):
            out[name] = kids[i]
            i += 1
    for k in kids[i:]:
        if k.tag == 0xA3:
            out["extensions"] = k
    return out


def _set_oid(alg: der.Node, dotted: str) -> None:
    assert alg.children is not None
    alg.children[0] = der.oid(dotted)


def _name_values(name: der.Node) -> list[der.Node]:
    return [atv for rdn in name.children or [] for atv in rdn.children or [] if atv.children]


def _extensions(fields: dict[str, der.Node]) -> list[der.Node]:
    ext = fields.get("extensions")
    if ext is None or not ext.children or ext.children[0].children is None:
        return []
    return ext.children[0].children


def _mutate_generic(rng: random.Random, root: der.Node) -> str:
    nodes = root.walk()
    node = rng.choice(nodes[1:])
    op = rng.randrange(8)
    if node.children is None:
        if op == 0 and node.content:
            i = rng.randrange(len(node.content) * 8)
            b = bytearray(node.content)
            b[i // 8] ^= 1 << (i % 8)
            node.content = bytes(b)
            return "generic bit flip"
        if op == 1:
            node.content = node.content[: rng.randrange(len(node.content) + 1)]
            return "generic truncated content"
        if op == 2:
            node.content += rng.randbytes(rng.choice([1, 2, 40]))
            return "generic longer content"
        if op == 3:
            node.content = rng.choice(JUNK)
            return "generic junk content"
    elif node.children:
        if op == 0:
            del node.children[rng.randrange(len(node.children))]
            return "generic child removed"
        if op == 1:
            node.children.insert(rng.randrange(len(node.children) + 1), rng.choice(node.children).copy())
            return "generic child duplicated"
        if op == 2 and len(node.children) > 1:
            i, j = rng.sample(range(len(node.children)), 2)
            node.children[i], node.children[j] = node.children[j], node.children[i]
            return "generic children swapped"
        if op == 3:
            node.children = []
            return "generic emptied"
    if op in (4, 5):
        node.tag = rng.choice([0x02, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x17, 0x18, 0x1E, 0x30, 0x31, 0xA0, 0xA3])
        if node.tag & 0x20 and node.children is None:
            node.children = []
        elif not node.tag & 0x20 and node.children is not None:
            node.content = b"".join(c.encode() for c in node.children)
            node.children = None
        return "generic tag changed"
    node.length_delta = rng.choice([-3, -1, 1, 2])
    return "generic length lie"


def _mutate_amd_value(rng: random.Random, value: bytes) -> bytes:
    return rng.choice(
        [
            b"\x02\x01\x80",  # negative
            b"\x02\x02\x01\x00",  # 256
            b"\x02\x09" + b"\x01" * 9,  # huge
            b"\x02\x00",  # empty INTEGER
            b"\x02\x05\x01",  # length beyond the content
            b"\x04\x01\x07",  # OCTET STRING, not INTEGER
            b"",
            b"\x04\x40" + bytes(64),  # a wrapped hwID where an SPL is expected
            b"\x04\x41" + bytes(64),  # a lying length
            bytes(8),
            bytes(66),
            value + b"\x00",
            value[:-1],
        ]
    )


def mutate_cert(rng: random.Random, cert_der: bytes) -> tuple[bytes, str]:
    """One structure-aware mutation of a DER certificate, re-encoded; returns (DER, label)."""
    root = der.parse(cert_der)
    fields = _tbs_fields(root)
    kind = rng.randrange(12)
    label: str
    if kind == 0:
        version = fields.get("version")
        choice = rng.randrange(8)
        if version is None or choice == 7:
            kids = _tbs(root).children
            assert kids is not None
            if version is not None:
                kids.remove(version)
                label = "version removed (v1 with extensions)"
            else:
                kids.insert(0, der.Node(0xA0, children=[der.integer(2)]))
                label = "version added"
        else:
            assert version.children is not None
            version.children[0] = der.Node(
                0x02, [b"\x00", b"\x01", b"\x03", b"\x09", b"\xff", b"", b"\x00\x02"][choice]
            )
            label = f"version {version.children[0].content.hex() or 'empty'}"
    elif kind == 1:
        fields["serial"].content = rng.choice(
            [b"\x80", b"\x00", b"\xff" * 25, b"", b"\x01" * 40, b"\x00\x01"]
        )
        label = "serial number"
    elif kind == 2:
        dotted = rng.choice(SIG_ALG_OIDS)
        where = rng.choice(["tbs", "outer", "both"])
        assert root.children is not None
        for alg in [fields["signature"]] * (where != "outer") + [root.children[1]] * (where != "tbs"):
            _set_oid(alg, dotted)
            if rng.random() < 0.5 and alg.children is not None:
                del alg.children[1:]  # no parameters
        label = f"signature algorithm {dotted} ({where})"
    elif kind == 3:
        # RSASSA-PSS parameters: unknown hash, other MGF hash, huge or negative salt
        assert root.children is not None
        alg = rng.choice([fields["signature"], root.children[1]])
        _set_oid(alg, "1.2.840.113549.1.1.10")
        hash_alg = der.seq(der.oid(rng.choice(HASH_OIDS)))
        mgf = der.seq(
            der.oid(rng.choice(["1.2.840.113549.1.1.8", "1.2.3"])), der.seq(der.oid(rng.choice(HASH_OIDS)))
        )
        salt = der.integer(rng.choice([0, 20, 48, 1 << 40, -1]))
        params = [
            der.Node(0xA0, children=[hash_alg]),
            der.Node(0xA1, children=[mgf]),
            der.Node(0xA2, children=[salt]),
        ]
        assert alg.children is not None
        alg.children[1:] = [der.seq(*rng.sample(params, rng.randrange(4)))]
        label = "RSASSA-PSS parameters"
    elif kind == 4:
        validity = fields["validity"]
        assert validity.children is not None
        t = rng.choice(validity.children)
        t.tag, t.content = rng.choice(
            [
                (0x17, b"zzzzzzzzzzzzz"),
                (0x17, b"991231235960Z"),
                (0x17, b"000000000000Z"),
                (0x18, b"00000101000000Z"),
                (0x18, b"99991231235959Z"),
                (0x17, b"2401010000Z"),
                (0x18, b"20240101000000+0100"),
                (0x17, b""),
                (0x02, b"\x01"),
            ]
        )
        label = f"validity {t.content!r}"
    elif kind == 5:
        name = fields[rng.choice(["issuer", "subject"])]
        values = _name_values(name)
        op = rng.randrange(5)
        if op == 0 or not values:
            name.children = []
            label = "empty name"
        elif op == 1:
            atv = rng.choice(values)
            assert atv.children is not None
            atv.children[1] = rng.choice(
                [
                    der.Node(0x1E, b"\x00A\x00"),  # BMPString of odd length
                    der.Node(0x0C, b"\xff\xfe"),  # UTF8String that is not UTF-8
                    der.Node(0x13, b"@@"),  # PrintableString with a forbidden character
                    der.Node(0x1C, b"\x00\x00\xd8\x00"),  # UniversalString with a surrogate
                    der.Node(0x02, b"\x01"),
                    der.Node(0x0C, b""),
                    der.Node(0x0C, b"A" * 300),
                    der.Node(0x04, b"\x00"),
                ]
            )
            label = "name value type"
        elif op == 2:
            atv = rng.choice(values)
            assert atv.children is not None
            atv.children[0] = der.oid(rng.choice([*NAME_ATTR_OIDS, "1.2.3.4"]))
            label = "name attribute type"
        elif op == 3:
            assert name.children is not None
            name.children.append(name.children[0].copy())
            label = "duplicated RDN"
        else:
            atv = rng.choice(values)
            assert atv.children is not None
            atv.children.append(der.Node(0x05))
            label = "name attribute with a third element"
    elif kind == 6:
        spki = rng.choice(other_spkis())
        kids = _tbs(root).children
        assert kids is not None
        kids[kids.index(fields["spki"])] = der.parse(spki)
        label = "key type replaced"
    elif kind == 7:
        spki = fields["spki"]
        assert spki.children is not None and spki.children[0].children is not None
        alg = spki.children[0]
        op = rng.randrange(4)
        assert alg.children is not None
        if op == 0:
            alg.children[0] = der.oid(rng.choice(KEY_ALG_OIDS))
            label = "key algorithm"
        elif op == 1:
            alg.children[1:] = [der.oid(rng.choice(CURVE_OIDS))]
            label = "key curve"
        elif op == 2:
            bits = spki.children[1]
            bits.content = bits.content[: rng.randrange(1, max(2, len(bits.content)))]
            label = "key bits truncated"
        else:
            spki.children[1].content = rng.choice(
                [b"\x00", b"\x07" + bytes(10), b"\x00\x04" + bytes(48), b""]
            )
            label = "key bits junk"
    elif kind in (8, 9):
        exts = _extensions(fields)
        op = rng.randrange(7)
        if not exts or op == 0:
            kids = _tbs(root).children
            assert kids is not None
            if "extensions" in fields:
                kids.remove(fields["extensions"])
            label = "extensions removed"
        elif op == 1:
            del exts[rng.randrange(len(exts))]
            label = "one extension removed"
        elif op == 2:
            exts.append(rng.choice(exts).copy())
            label = "duplicated extension"
        elif op == 3:
            exts.append(
                der.seq(der.oid("1.2.3.4.5.6"), der.Node(0x01, b"\xff"), der.octet_string(b"\x05\x00"))
            )
            label = "unknown critical extension"
        else:
            # an extension the verifiers read (AMD's TCB, hwID; Intel's SGX), or a standard one
            ext = rng.choice(exts)
            assert ext.children is not None
            value = ext.children[-1]
            dotted = rng.choice(AMD_OIDS + STD_EXT_OIDS + [SGX_OID]) if op == 4 else None
            if dotted is not None:
                ext.children[0] = der.oid(dotted)
            if op == 5 and value.content[:1] == b"\x30":
                try:
                    inner = der.parse(value.content)
                except (ValueError, IndexError):
                    inner = None
                if inner is not None and inner.children:
                    what = _mutate_generic(rng, inner)
                    value.content = inner.encode()
                    label = f"extension inner {what}"
                    return root.encode(), label
            value.content = _mutate_amd_value(rng, value.content)
            label = f"extension value ({dotted or 'same oid'})"
    elif kind == 10:
        assert root.children is not None
        root.children[2].content = rng.choice([b"", b"\x08", b"\x00", b"\x00" + bytes(512), b"\x07\xff"])
        label = "signature bits"
    else:
        label = _mutate_generic(rng, root)
    return root.encode(), label


def signed_part_changed(original: bytes, mutated: bytes) -> bool:
    """Whether *mutated* differs from *original* in its TBSCertificate (or is not DER at all)."""
    try:
        root = der.parse(mutated)
        tbs = root.children[0].encode() if root.children else b""
    except (ValueError, IndexError):
        return True
    orig = der.parse(original)
    assert orig.children is not None
    return tbs != orig.children[0].encode()


def flip_bits(rng: random.Random, data: bytes, n: int = 1) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        i = rng.randrange(len(out) * 8)
        out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def _binary_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    op = rng.randrange(4)
    if op == 0:
        return flip_bits(rng, data, rng.choice([1, 1, 2, 8])), "bit flip"
    if op == 1:
        return data[: rng.randrange(len(data))], "truncated"
    if op == 2:
        return data + rng.randbytes(rng.choice([1, 16, 300])), "extended"
    i = rng.randrange(len(data))
    return data[:i] + rng.randbytes(rng.choice([1, 4, 8])) + data[i + 4 :], "bytes replaced"


def json_mutation(rng: random.Random, doc: dict[str, Any]) -> tuple[bytes, str]:
    """Change one member's type or value (including lone surrogates and deep nesting)."""
    key = rng.choice(list(doc))
    op = rng.randrange(8)
    doc = dict(doc)
    if op == 0:
        del doc[key]
        return json.dumps(doc).encode(), f"json {key} removed"
    if op == 1:
        doc[key] = rng.choice([None, 0, -1, 1.5, True, [], {}, [256], ["x"], {"a": 1}, 2**70])
        return json.dumps(doc).encode(), f"json {key} type"
    if op == 2:
        doc[key] = "\ud800" + "A" * rng.choice([0, 3, 40])
        return json.dumps(doc).encode(), f"json {key} lone surrogate"
    if op == 3:
        depth = rng.choice([200, 1000, 5000])
        text = json.dumps(doc)
        nested = "[" * depth + "1" + "]" * depth
        return text[
            :-1
        ].encode() + b', "' + key.encode() + b'": ' + nested.encode() + b"}", f"json {key} deep"
    if op == 4:
        return json.dumps(doc).encode()[: rng.randrange(1, 60)], "json truncated"
    if op == 5:
        value = doc[key]
        if isinstance(value, str) and value:
            i = rng.randrange(len(value))
            doc[key] = value[:i] + rng.choice(["!", "=", "-", "\u00e9", "\x00", "\udc00"]) + value[i + 1 :]
            if rng.random() < 0.3:
                doc[key] = "-----BEGIN CERTIFICATE-----\ud800" + doc[key]
            return json.dumps(doc).encode(), f"json {key} character"
    if op == 6:
        return ("[" * 3000).encode(), "json deep array"
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\xff", "json bad utf-8"


# ---------------------------------------------------------------------------- SNP


def snp_seeds() -> list[tuple[bytes, bytes, str]]:
    """(report, signing certificate DER, its kind) of the captured SNP reports."""
    d = DATA / "snp"
    return [
        ((d / "test-report.bin").read_bytes(), (d / "test-vcek.der").read_bytes(), "VCEK"),
        ((d / "test-vlek-report.bin").read_bytes(), (d / "test-vlek.der").read_bytes(), "VLEK"),
    ]


@functools.cache
def amd_milan_chain() -> tuple[bytes, bytes]:
    """(ASK DER, ARK DER) of Milan."""
    certs = x509.load_pem_x509_certificates((DATA / "snp" / "milan_ask_ark_asvk.pem").read_bytes())
    return certs[0].public_bytes(serialization.Encoding.DER), certs[1].public_bytes(
        serialization.Encoding.DER
    )


def _snp_doc(report: bytes, certs: list[tuple[str | None, bytes]], rng: random.Random) -> dict[str, Any]:
    chain: list[Any] = []
    for kind, data in certs:
        style = rng.randrange(3)
        if style == 0 or kind is None:
            encoded: Any = base64.b64encode(data).decode()
        elif style == 1:
            encoded = list(data)
        else:
            encoded = base64.urlsafe_b64encode(data).decode().rstrip("=")
        chain.append(encoded if kind is None else {"cert_type": kind, "data": encoded})
    return {"report": base64.b64encode(report).decode(), "cert_chain": chain}


def snp_cases(rng: random.Random, n: int) -> Iterator[Case]:
    seeds = snp_seeds()
    ask, ark = amd_milan_chain()
    for i in range(n):
        report, cert, kind = rng.choice(seeds)
        rd = report[0x50:0x90]
        which = i % 10
        certs: list[tuple[str | None, bytes]] = [(kind, cert)]
        if which < 6:
            mutated, label = mutate_cert(rng, cert)
            certs = [(rng.choice([kind, None]), mutated)]
            if rng.random() < 0.3:
                certs += [("ASK", ask), ("ARK", ark)]
            body = json.dumps(_snp_doc(report, certs, rng)).encode()
            yield Case(f"snp {kind} cert: {label}", body, rd, signed_part_changed(cert, mutated))
        elif which == 6:
            target = rng.choice(["ASK", "ARK"])
            mutated, label = mutate_cert(rng, ask if target == "ASK" else ark)
            certs.append((rng.choice([target, None]), mutated))
            yield Case(f"snp {target} cert: {label}", json.dumps(_snp_doc(report, certs, rng)).encode(), rd)
        elif which == 7:
            bad, label = _binary_mutation(rng, report)
            yield Case(f"snp report: {label}", json.dumps(_snp_doc(bad, certs, rng)).encode(), rd)
        elif which == 8:
            body, label = json_mutation(rng, _snp_doc(report, certs, rng))
            yield Case(f"snp evidence: {label}", body, rd)
        elif COCO_SNP.exists() and rng.random() < 0.5:
            yield _coco_case(rng)
        else:
            bad, label = _binary_mutation(rng, report)
            yield Case(f"snp raw report: {label}", bad, rd)


# the sev crate's JSON form a CoCo guest sends; used once the repository carries it
COCO_SNP = DATA / "snp" / "coco-guest-evidence.json"


def _coco_case(rng: random.Random) -> Case:
    doc = json.loads(COCO_SNP.read_bytes())
    report = doc["attestation_report"]
    rd = bytes(report["report_data"])
    op = rng.randrange(3)
    if op == 0:
        entry = doc["cert_chain"][0]
        original = bytes(entry["data"])
        mutated, label = mutate_cert(rng, original)
        entry["data"] = list(mutated)
        return Case(
            f"snp coco cert: {label}", json.dumps(doc).encode(), rd, signed_part_changed(original, mutated)
        )
    if op == 1:
        # a byte array with a value that is no byte, or of another length
        name = rng.choice([k for k, v in report.items() if isinstance(v, list)])
        values = report[name]
        if rng.random() < 0.5 and values:
            values[rng.randrange(len(values))] = rng.choice([256, -1, 2**64, 1.5, "a", None, []])
            label = f"{name} element"
        else:
            report[name] = values[: rng.randrange(len(values) + 1)] + [0] * rng.choice([0, 1, 100])
            label = f"{name} length"
        return Case(f"snp coco report: {label}", json.dumps(doc).encode(), rd)
    body, label = mutate_json(rng, doc)
    return Case(f"snp coco evidence: {label}", body, rd)


# ---------------------------------------------------------------------------- TDX


def tdx_seeds() -> list[bytes]:
    return [(DATA / "tdx" / f"tdx_quote_{n}.dat").read_bytes() for n in (4, 5, 6)]


def tdx_split(quote: bytes) -> tuple[bytes, bytes, bytes]:
    """(bytes before the PCK chain's type/size fields, the PEM chain, the signed header+body)."""
    version = struct.unpack_from("<H", quote, 0)[0]
    body_end = 48 + 584 if version == 4 else 48 + 6 + struct.unpack_from("<I", quote, 50)[0]
    pem_start = quote.index(b"-----BEGIN CERTIFICATE-----")
    (chain_len,) = struct.unpack_from("<I", quote, pem_start - 4)
    return quote[body_end + 4 : pem_start - 6], quote[pem_start : pem_start + chain_len], quote[:body_end]


def tdx_rebuild(quote: bytes, chain: bytes) -> bytes:
    """The quote with another PCK chain (sizes recomputed)."""
    head, _, signed = tdx_split(quote)
    cert_body = head[128 + 6 :] + struct.pack("<HI", 5, len(chain)) + chain
    sig_data = head[:128] + struct.pack("<HI", 6, len(cert_body)) + cert_body
    return signed + struct.pack("<I", len(sig_data)) + sig_data


def _tdx_rd(quote: bytes) -> bytes:
    _, _, signed = tdx_split(quote)
    return (
        signed[48 + 520 : 48 + 584]
        if struct.unpack_from("<H", quote, 0)[0] == 4
        else signed[54 + 520 : 54 + 584]
    )


def _pem(ders: list[bytes]) -> bytes:
    return b"".join(
        b"-----BEGIN CERTIFICATE-----\n"
        + b"\n".join(base64.encodebytes(d).split(b"\n")).rstrip(b"\n")
        + b"\n-----END CERTIFICATE-----\n"
        for d in ders
    )


def tdx_cases(rng: random.Random, n: int) -> Iterator[Case]:
    seeds = tdx_seeds()
    for i in range(n):
        quote = rng.choice(seeds)
        rd = _tdx_rd(quote)
        _, chain, _ = tdx_split(quote)
        ders = [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(chain)]
        which = i % 10
        if which < 6:
            k = rng.choice([0, 0, 0, 1, 2])
            mutated, label = mutate_cert(rng, ders[k])
            changed = signed_part_changed(ders[k], mutated)
            ders[k] = mutated
            bad = tdx_rebuild(quote, _pem(ders))
            yield Case(f"tdx cert {k}: {label}", _tdx_wrap(rng, bad), rd, changed)
        elif which == 6:
            op = rng.randrange(3)
            if op == 0:
                pem = _pem(ders).replace(b"CERTIFICATE", b"CERTIFICATE", 1)[: rng.randrange(40, 3000)]
                label = "pem truncated"
            elif op == 1:
                pem = _pem(ders[: rng.randrange(len(ders))] + [ders[-1]] * rng.randrange(4))
                label = "chain shape"
            else:
                pem = flip_bits(rng, _pem(ders), 4)
                label = "pem bits"
            yield Case(f"tdx chain: {label}", _tdx_wrap(rng, tdx_rebuild(quote, pem)), rd)
        elif which in (7, 8):
            bad, label = _binary_mutation(rng, quote)
            yield Case(f"tdx quote: {label}", _tdx_wrap(rng, bad), rd)
        else:
            body, label = json_mutation(rng, {"quote": base64.b64encode(quote).decode(), "cc_eventlog": None})
            yield Case(f"tdx evidence: {label}", body, rd)


def _tdx_wrap(rng: random.Random, quote: bytes) -> bytes:
    if rng.random() < 0.5:
        return quote
    return json.dumps({"quote": base64.b64encode(quote).decode()}).encode()


# ---------------------------------------------------------------------------- az-snp-vtpm

AZ_RD = {
    1: b"challenge",
    2: bytes.fromhex(
        "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
    ),
}


def az_seeds() -> list[dict[str, Any]]:
    return [json.loads((DATA / "az-snp-vtpm" / f"evidence-v{n}.json").read_bytes()) for n in (1, 2)]


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def az_cases(rng: random.Random, n: int) -> Iterator[Case]:
    seeds = az_seeds()
    for i in range(n):
        doc = json.loads(json.dumps(rng.choice(seeds)))
        rd = AZ_RD[doc["version"]]
        which = i % 10
        if which < 5:
            original = _b64url_decode(doc["vcek"])
            mutated, label = mutate_cert(rng, original)
            doc["vcek"] = _b64url(mutated)
            yield Case(
                f"az vcek: {label}", json.dumps(doc).encode(), rd, signed_part_changed(original, mutated)
            )
        elif which in (5, 6):
            hcl = _b64url_decode(doc["hcl_report"])
            bad, label = _binary_mutation(rng, hcl)
            doc["hcl_report"] = _b64url(bad)
            yield Case(f"az hcl report: {label}", json.dumps(doc).encode(), rd)
        elif which == 7:
            quote = doc["tpm_quote"]
            field = rng.choice(["signature", "message"])
            bad, label = _binary_mutation(rng, bytes.fromhex(quote[field]))
            quote[field] = bad.hex()
            yield Case(f"az tpm quote {field}: {label}", json.dumps(doc).encode(), rd)
        elif which == 8:
            body, label = json_mutation(rng, doc)
            yield Case(f"az evidence: {label}", body, rd)
        else:
            body, label = json_mutation(rng, doc["tpm_quote"])
            doc["tpm_quote"] = (
                json.loads(body) if body[:1] == b"{" and _loads_ok(body) else body.decode("latin-1")
            )
            yield Case(f"az tpm_quote: {label}", json.dumps(doc).encode(), rd)


def _loads_ok(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


CASES: dict[str, Callable[[random.Random, int], Iterator[Case]]] = {
    "snp": snp_cases,
    "tdx": tdx_cases,
    "az-snp-vtpm": az_cases,
}
