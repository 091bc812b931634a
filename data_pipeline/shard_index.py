"""The shard index: the manifest, and every sample's place in the WebDataset tars, read once.

`read_manifest` checks the schema; `_build_index` reads each shard (sha256-verified when asked), walks its
tar headers without unpacking (a fast path over the raw bytes, `tarfile` as the fallback for anything
unusual) and records each member's split, dataset and byte range, so the loader can deal positions and
decode only the samples a rank gets. Malformed shards are a DataError naming the file and member.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fusionrec.data_pipeline.errors import DataError
from fusionrec.data_pipeline.records import SPLITS

if TYPE_CHECKING:
    from fusionrec.data_pipeline.loader import LoaderConfig

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass
class _ShardIndex:
    """The selected samples of one shard, in file order."""

    path: str
    offsets: np.ndarray  # int64 byte offset of each sample's json payload
    sizes: np.ndarray  # int64 payload sizes
    key_blob: bytes  # all keys, utf-8, concatenated (a list of 1e7 str would cost ~1 GB)
    key_ends: np.ndarray  # int64 end of key i in key_blob

    def __len__(self) -> int:
        return len(self.offsets)

    def key(self, i: int) -> str:
        start = int(self.key_ends[i - 1]) if i else 0
        return self.key_blob[start : int(self.key_ends[i])].decode("utf-8")

    def truncated(self, n: int) -> _ShardIndex:
        end = int(self.key_ends[n - 1]) if n else 0
        return _ShardIndex(
            self.path, self.offsets[:n], self.sizes[:n], self.key_blob[:end], self.key_ends[:n]
        )


def read_manifest(root: str | Path) -> tuple[dict[str, Any], str]:
    """The corpus manifest and the sha256 of its bytes (which identifies the corpus in loader states)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(path, None, f"not a corpus: no {MANIFEST}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"manifest is not valid JSON: {err.msg}") from err
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise DataError(path, None, f"schema_version={found!r}, this loader reads {SCHEMA_VERSION}")
    for i, entry in enumerate(manifest.get("shards") or []):
        if not isinstance(entry, dict) or not {"name", "samples", "bytes", "sha256"} <= entry.keys():
            raise DataError(path, None, f"shards[{i}]={entry!r}: needs name, samples, bytes, sha256")
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_shard_bytes(path: Path, entry: dict[str, Any], verify: bool) -> bytes:
    if not path.is_file():
        raise DataError(path, None, "shard listed in manifest.json is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(path, None, f"size {size} bytes != manifest bytes {entry['bytes']}")
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DataError(path, None, f"sha256 mismatch with manifest ({entry['sha256'][:12]}...)")
    return data


_ZERO_BLOCK = bytes(512)
_REGULAR = (ord("0"), 0)  # tar typeflags of a regular file
# A top-level string field of a sample's json. Values with escapes don't match and fall back to
# json.loads; a key cannot match inside a string value, where its quotes would be escaped.
_FIELD = {f: re.compile(rb'"' + f.encode() + rb'"\s*:\s*"([^"\\]*)"') for f in ("split", "dataset")}


def _tar_members(data: bytes, path: Path, checksums: bool) -> tuple[list[bytes], list[int], list[int]]:
    """(names, payload offsets, sizes) of the members of a tar held in memory.

    Fast path for plain ustar headers (what tarfile/webdataset/Ray write for short names): ~1 us per
    member instead of ~50 us through tarfile. Any other header (pax, GNU long name, base-256 size)
    sends the whole shard through `tarfile`, which handles every format. Header checksums are skipped
    when the shard's sha256 was already verified (its bytes are then exactly the writer's).
    """
    names, offsets, sizes, pos = [], [], [], 0
    while pos + 512 <= len(data):
        if (
            data[pos + 156] not in _REGULAR
            or data[pos + 124] & 0x80
            or data[pos + 257 : pos + 262] != b"ustar"
        ):
            if data[pos : pos + 512] == _ZERO_BLOCK:
                return names, offsets, sizes
            return _tar_members_slow(data, path)
        try:
            size = int(data[pos + 124 : pos + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError as err:
            raise DataError(path, None, f"corrupt tar header at byte {pos}") from err
        if checksums:
            _check_header(data[pos : pos + 512], pos, path)
        name = data[pos : pos + 100].split(b"\0", 1)[0]
        if data[pos + 257 : pos + 263] == b"ustar\0":  # POSIX name prefix; GNU keeps atime etc. there
            prefix = data[pos + 345 : pos + 500].split(b"\0", 1)[0]
            name = prefix + b"/" + name if prefix else name
        names.append(name)
        offsets.append(pos + 512)
        sizes.append(size)
        pos += 512 + -(-size // 512) * 512
    raise DataError(path, None, f"truncated tar: no end-of-archive block after byte {pos}")


def _check_header(header: bytes, pos: int, path: Path) -> None:
    try:
        checksum = int(header[148:156].split(b"\0", 1)[0].strip(), 8)
    except ValueError as err:
        raise DataError(path, None, f"corrupt tar header at byte {pos}") from err
    if checksum != sum(header[:148]) + 256 + sum(header[156:]):
        raise DataError(path, None, f"corrupt tar header at byte {pos} (checksum)")


def _tar_members_slow(data: bytes, path: Path) -> tuple[list[bytes], list[int], list[int]]:
    try:
        members = tarfile.open(fileobj=io.BytesIO(data), mode="r:").getmembers()
    except tarfile.TarError as err:
        raise DataError(path, None, f"not a readable tar file: {err}") from err
    for m in members:
        if not m.isfile():
            raise DataError(path, None, f"member {m.name!r}: expected only '<key>.json' sample files")
    return (
        [m.name.encode("utf-8") for m in members],
        [m.offset_data for m in members],
        [m.size for m in members],
    )


def _field(data: bytes, start: int, size: int, name: str, path: Path, member: str) -> str:
    match = _FIELD[name].search(data, start, start + size)
    if match is not None:
        return match.group(1).decode("utf-8")
    return _decode(data[start : start + size], path, member)[name]


def _index_shard(path: Path, entry: dict[str, Any], cfg: LoaderConfig) -> _ShardIndex:
    """Walk one shard's tar members; keep the samples the config selects.

    Only `split`/`dataset` are read here (and only when the filter needs them); a sample's full json is
    validated when it is read, failing with a DataError naming shard and member.
    """
    data = _read_shard_bytes(path, entry, cfg.verify)
    names, starts, lengths = _tar_members(data, path, checksums=not cfg.verify)
    if len(names) != entry["samples"]:
        raise DataError(path, None, f"holds {len(names)} samples, manifest says {entry['samples']}")
    need_split = set(cfg.splits) != set(SPLITS)
    offsets, sizes, keys = [], [], []
    for raw, start, size in zip(names, starts, lengths, strict=True):
        if not raw.endswith(b".json"):
            raise DataError(path, None, f"member {raw!r}: expected only '<key>.json' sample files")
        member = raw.decode("utf-8")
        if need_split and _field(data, start, size, "split", path, member) not in cfg.splits:
            continue
        if cfg.datasets and _field(data, start, size, "dataset", path, member) not in cfg.datasets:
            continue
        offsets.append(start)
        sizes.append(size)
        keys.append(raw[: -len(b".json")])
    return _ShardIndex(
        str(path),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        b"".join(keys),
        np.cumsum([len(k) for k in keys], dtype=np.int64),
    )


def _decode(payload: bytes, path: Path | str, member: str) -> dict[str, Any]:
    try:
        sample = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, None, f"member {member!r}: invalid JSON ({err})") from err
    if not isinstance(sample, dict) or not {"dataset", "split", "history", "target"} <= sample.keys():
        raise DataError(path, None, f"member {member!r}: sample needs dataset, split, history, target")
    return sample


def _build_index(root: Path, manifest: dict[str, Any], cfg: LoaderConfig) -> list[_ShardIndex]:
    known = set(manifest.get("datasets") or {})
    unknown = sorted(set(cfg.datasets) - known)
    if unknown:
        raise ValueError(f"loader.datasets: {unknown} not in this corpus (has {sorted(known)})")
    shards, kept = [], 0
    empty = np.zeros(0, dtype=np.int64)
    for entry in manifest["shards"]:
        if cfg.max_samples is not None and kept >= cfg.max_samples:
            # Quick runs need not read (or verify) the shards they will never use.
            shards.append(_ShardIndex(str(root / entry["name"]), empty, empty, b"", empty))
            continue
        index = _index_shard(root / entry["name"], entry, cfg)
        if cfg.max_samples is not None:
            index = index.truncated(min(len(index), cfg.max_samples - kept))
        kept += len(index)
        shards.append(index)
    return shards
