"""``layerseal keys rotate``: new broker key versions for every layer, annotations only.

Each layer's key packet is sent to the broker, which opens it with the current KEK
version and seals the same private options under a fresh version.  Only the layer
annotations change: no blob is re-encrypted or re-uploaded, and the layer key inside
the packet stays the same (rotation protects against a leaked KEK version, not a leaked
layer key).  With ``reencrypt`` the layers are decrypted (with keys the caller holds)
and encrypted again with fresh layer keys, for when a layer key itself may have leaked.

Tags share keys: ``layer add`` keeps the older layers, with their key packets, so
``v1`` and ``v2`` name the same key versions.  Before retiring versions, rotation looks
through the tags of the repositories it can list and refuses while another tag still
needs a version it would retire, unless every such tag is rotated too (``all_tags``) or
the caller accepts breaking them (``force``).  Versions are retired only after every
manifest is written, so a failure midway leaves every tag pullable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from layerseal.builder.copy import (
    CopyOptions,
    Progress,
    copy_image,
    put_blob_retrying,
    reuse_blob,
    transfer_layers,
)
from layerseal.crypto.keywrap import BROKER_SCHEMES, KeyUnwrapper, KeyWrapper
from layerseal.errors import BadInputError, NotFoundError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest
from layerseal.image.encryption import keys_annotation, wrapped_keys
from layerseal.image.manifest import Manifest, parse_any
from layerseal.image.transport import ImageDestination, ImageSource, resolve_manifest
from layerseal.kbs.client import PublisherClient
from layerseal.kbs.packets import KeyPacket, ResourcePath

#: (key id, version): one KEK version at the broker
KeyVersion = tuple[str, int]


class TagStore(Protocol):
    """The tags of one registry repository, read and (for ``all_tags``) rewritten."""

    @property
    def name(self) -> str:
        """``docker://HOST/REPO``; a tag is shown as ``NAME:TAG``."""

    @property
    def writable(self) -> bool: ...

    def list_tags(self) -> list[str]: ...

    def get_manifest(self, reference: str) -> tuple[bytes, str]: ...

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> Descriptor: ...


class RegistryTags:
    """A :class:`TagStore` over a ``RegistryClient`` (tags/list follows pagination)."""

    def __init__(
        self, client: Any, registry: str, repository: str, *, writable: bool, page_size: int | None = None
    ) -> None:
        self.client = client
        self.page_size = page_size
        self.repository = repository
        self.name = f"docker://{registry}/{repository}"
        self.writable = writable

    def list_tags(self) -> list[str]:
        try:
            tags: list[str] = self.client.list_tags(self.repository, self.page_size)
        except NotFoundError:
            return []  # a repository without any tag yet (distribution: 404 NAME_UNKNOWN)
        return tags

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        data, media_type, _ = self.client.get_manifest(self.repository, reference)
        return data, media_type

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> Descriptor:
        written: Descriptor = self.client.put_manifest(self.repository, reference, data, media_type)
        return written


@dataclass(frozen=True)
class TagUse:
    """A tag whose manifest (or one of its index's manifests) names versions being retired."""

    store: TagStore
    tag: str
    versions: tuple[KeyVersion, ...]

    @property
    def name(self) -> str:
        return f"{self.store.name}:{self.tag}"


@dataclass(frozen=True)
class RotateReport:
    manifest: Descriptor
    rotated: tuple[tuple[int, str, str], ...]  # (layer, old kid, new kid)
    reencrypted: int
    #: other tags rewritten with ``all_tags`` (NAME:TAG -> new manifest digest)
    also_rotated: tuple[tuple[str, str], ...] = ()
    retired: tuple[KeyVersion, ...] = ()
    #: tags left naming retired versions (only with ``force``)
    broken: tuple[str, ...] = ()


def _layer_key_version(kid: str) -> KeyVersion | None:
    try:
        path = ResourcePath.parse(kid)
    except BadInputError:
        return None  # a kid outside layerseal's scheme: not a broker key version
    return None if path.version is None else (path.key_id, path.version)


def _broker_packets(layer: Descriptor) -> dict[str, list[bytes]]:
    if not mt.is_encrypted(layer.media_type):
        return {}
    found = wrapped_keys(layer.annotations)
    return {s: found[s] for s in BROKER_SCHEMES if found.get(s)}


def _manifest_versions(manifest: Manifest) -> set[KeyVersion]:
    out: set[KeyVersion] = set()
    for layer in manifest.layers:
        for blobs in _broker_packets(layer).values():
            for blob in blobs:
                try:
                    kv = _layer_key_version(KeyPacket.parse(blob).kid)
                except BadInputError:
                    continue  # not a packet we can read: it names nothing we retire
                if kv is not None:
                    out.add(kv)
    return out


def _tag_versions(store: TagStore, tag: str) -> set[KeyVersion]:
    data, media_type = store.get_manifest(tag)
    parsed = parse_any(data, media_type, f"{store.name}:{tag}")
    if isinstance(parsed, Manifest):
        return _manifest_versions(parsed)
    out: set[KeyVersion] = set()
    for child in parsed.manifests:
        if child.media_type in mt.MANIFEST_TYPES:
            cdata, ctype = store.get_manifest(str(child.digest))
            sub = parse_any(cdata, ctype, f"{store.name}:{tag} manifest {child.digest}")
            if isinstance(sub, Manifest):
                out |= _manifest_versions(sub)
    return out


def find_tag_uses(
    stores: Iterable[TagStore], versions: set[KeyVersion], skip: Iterable[tuple[str, str]] = ()
) -> list[TagUse]:
    """Tags of *stores* naming any of *versions*; *skip* holds (store name, tag) pairs."""
    skipped = set(skip)
    uses = []
    for store in stores:
        for tag in sorted(store.list_tags()):
            if (store.name, tag) in skipped:
                continue
            hit = _tag_versions(store, tag) & versions
            if hit:
                uses.append(TagUse(store, tag, tuple(sorted(hit))))
    return uses


class _Renewer:
    """New packets from the broker, each old packet rotated once however many tags hold it."""

    def __init__(self, client: PublisherClient) -> None:
        self.client = client
        self.done: dict[bytes, bytes] = {}

    def renew(self, blob: bytes) -> tuple[str, bytes]:
        old_kid = KeyPacket.parse(blob).kid
        new = self.done.get(blob)
        if new is None:
            key_id = ResourcePath.parse(old_kid).key_id
            new = self.done[blob] = self.client.rotate_key(key_id, packet=blob)
        return old_kid, new

    def manifest(
        self,
        manifest: Manifest,
        rotated: list[tuple[int, str, str]] | None = None,
        only: set[KeyVersion] | None = None,
    ) -> Manifest:
        """*manifest* with its broker packets renewed (only those naming *only*, when given)."""
        layers: list[Descriptor] = []
        for i, d in enumerate(manifest.layers):
            annotations = dict(d.annotations)
            # packets keep the annotation they came under, so the publisher's ocicrypt config still matches
            for scheme, blobs in _broker_packets(d).items():
                renewed = []
                for blob in blobs:
                    if only is not None and _layer_key_version(KeyPacket.parse(blob).kid) not in only:
                        renewed.append(blob)  # another tag's own key: not this rotation's business
                        continue
                    old_kid, new = self.renew(blob)
                    renewed.append(new)
                    if rotated is not None:
                        rotated.append((i, old_kid, KeyPacket.parse(new).kid))
                name, value = keys_annotation(scheme, renewed)
                annotations[name] = value
            layers.append(d.with_changes(annotations=annotations) if annotations != d.annotations else d)
        return manifest.with_changes(layers=tuple(layers))


def _rewrite_tag(use: TagUse, renewer: _Renewer, only: set[KeyVersion]) -> Descriptor:
    """Rewrite one other tag in place: its manifest, or each child of its index that needs it."""
    store, tag = use.store, use.tag
    data, media_type = store.get_manifest(tag)
    parsed = parse_any(data, media_type, use.name)
    if isinstance(parsed, Manifest):
        new = renewer.manifest(parsed, only=only)
        return store.put_manifest(tag, new.to_bytes(), new.effective_media_type)
    children = []
    for child in parsed.manifests:
        if child.media_type in mt.MANIFEST_TYPES:
            cdata, ctype = store.get_manifest(str(child.digest))
            sub = parse_any(cdata, ctype, f"{use.name} manifest {child.digest}")
            if isinstance(sub, Manifest) and _manifest_versions(sub) & only:
                body = renewer.manifest(sub, only=only).to_bytes()
                desc = store.put_manifest(str(Digest.of(body)), body, sub.effective_media_type)
                child = child.with_changes(digest=desc.digest, size=desc.size)
        children.append(child)
    index = replace(parsed, manifests=tuple(children))
    return store.put_manifest(tag, index.to_bytes(), index.media_type or mt.OCI_INDEX)


def _active_versions(client: PublisherClient, key_ids: Iterable[str]) -> set[KeyVersion]:
    """What ``--retire-previous`` retires: every active version of the rotated keys."""
    out: set[KeyVersion] = set()
    for key_id in sorted(set(key_ids)):
        for v in client.get_key(key_id).get("versions") or []:
            if isinstance(v, dict) and v.get("status") == "active" and isinstance(v.get("version"), int):
                out.add((key_id, v["version"]))
    return out


def _refusal(src: ImageSource, uses: Sequence[TagUse], retiring: set[KeyVersion]) -> BadInputError:
    shown = ", ".join(f"{u.name} ({len(u.versions)} key version(s))" for u in uses)
    return BadInputError(
        f"keys rotate {src.name}: retiring {len(retiring)} key version(s) would stop other tags that "
        f"use them: expected none, seen {len(uses)}: {shown}; rotate them too with --all-tags, "
        "or retire anyway with --force (those tags then fail to pull)"
    )


def rotate_keys(
    src: ImageSource,
    dst: ImageDestination,
    client: PublisherClient,
    *,
    retire_previous: bool = False,
    tag_stores: Sequence[TagStore] = (),
    replaced: tuple[str, str] | None = None,
    all_tags: bool = False,
    force: bool = False,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> RotateReport:
    """Rotate the image of *src* into *dst*.

    *tag_stores* are the repositories searched for other tags using the same keys;
    *replaced* is the (store name, tag) that *dst* overwrites, so it is no other user.
    """
    _, _, manifest = resolve_manifest(src, platform)
    blobs = [blob for d in manifest.layers for found in _broker_packets(d).values() for blob in found]
    if not blobs:
        raise BadInputError(
            f"{src.name}: expected layers with broker key packets ({' or '.join(BROKER_SCHEMES)}), seen none"
        )
    key_ids = [ResourcePath.parse(KeyPacket.parse(blob).kid).key_id for blob in blobs]
    retiring = _active_versions(client, key_ids) if retire_previous else set()
    uses: list[TagUse] = []
    # without retiring, --all-tags moves every tag naming the rotated versions to the new ones
    wanted = retiring or _manifest_versions(manifest)
    if retire_previous or all_tags:
        uses = find_tag_uses(tag_stores, wanted, [replaced] if replaced else [])
    if uses and retire_previous and not (all_tags or force):
        raise _refusal(src, uses, retiring)
    if all_tags:
        readonly = [u.name for u in uses if not u.store.writable]
        if readonly:
            raise BadInputError(
                "keys rotate --all-tags: expected the other tags in the destination's repository, "
                f"seen {', '.join(readonly)}: rotate those with their own repository as destination"
            )
    renewer = _Renewer(client)
    rotated: list[tuple[int, str, str]] = []
    new_manifest = renewer.manifest(manifest, rotated)
    transfer_layers(src, dst, manifest.layers, frozenset(), False, CopyOptions(), progress)
    if reuse_blob(src, dst, manifest.config) is None:
        put_blob_retrying(src, dst, manifest.config, CopyOptions().layer_attempts)
    written = dst.put_manifest(new_manifest.to_bytes(), new_manifest.effective_media_type)
    also = tuple((u.name, str(_rewrite_tag(u, renewer, wanted).digest)) for u in uses) if all_tags else ()
    broken = tuple(u.name for u in uses) if retire_previous and not all_tags else ()
    # retired last: a failure before this point leaves every tag pullable
    for key_id, version in sorted(retiring):
        client.retire_key_version(key_id, version)
    return RotateReport(written, tuple(rotated), 0, also, tuple(sorted(retiring)), broken)


def reencrypt(
    src: ImageSource,
    dst: ImageDestination,
    unwrappers: Sequence[KeyUnwrapper],
    wrappers: Sequence[KeyWrapper],
    *,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> RotateReport:
    """Fresh layer keys for every encrypted layer: decrypt with *unwrappers*, encrypt for *wrappers*."""
    if not unwrappers:
        raise BadInputError(
            "--reencrypt: expected --decryption-key for the current layers (broker KEKs are released only "
            "to attested enclaves, so the publisher must hold a jwe: recipient key), seen none"
        )
    if not wrappers:
        raise BadInputError("--reencrypt: expected --encryption-key for the new layer keys, seen none")
    _, _, manifest = resolve_manifest(src, platform)
    encrypted = tuple(i for i, d in enumerate(manifest.layers) if mt.is_encrypted(d.media_type))
    report = copy_image(
        src,
        dst,
        CopyOptions(
            wrappers=tuple(wrappers),
            unwrappers=tuple(unwrappers),
            encrypt_layers=encrypted,
            platform=platform,
        ),
        progress,
    )
    return RotateReport(report.manifest, (), sum(r.action == "reencrypted" for r in report.layers))
