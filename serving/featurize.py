"""Stage 5, featurize: turn sized sequences into what a consumer reads.

``json``: per user, each sequence as a list of events (ids, time, surface, dwell, query,
features), each sequence's event type, and the tenant's aggregate views.

``ufr`` (model-ready): for a batch of B users, per dataset ``<ds>`` of tenant length L,
aligned arrays, left-aligned (index 0 = newest), padded with zeros where ``mask`` is 0:

    <ds>.item_hash   int64   [B, L]    stable 63-bit hash of item_id (blake2b)
    <ds>.type_id     int16   [B, L]    event type id from the registry
    <ds>.age_s       float32 [B, L]    request time minus event time, seconds
    <ds>.dwell_ms    float32 [B, L]    0 when unknown
    <ds>.mask        uint8   [B, L]    1 for a real event, 0 for padding
    <ds>.embedding   float32 [B, L, D] only when the tenant's enrichments provide "embedding"

Binary encoding (``application/vnd.usersignals.ufr``): ``b"UFR1"``, a little-endian uint32
header length, a JSON header ``{"users", "tenant", "config_version", "views", "arrays":
[{"name", "dtype", "shape", "offset", "nbytes"}]}``, then the raw little-endian arrays, each
starting at a multiple of 8 bytes from the end of the header. ``serving.client`` decodes it.
"""
from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np
import orjson

from usersignals.models import EMBEDDING_DIM
from usersignals.registry import Registry, Tenant

from serving.model import UserSequences

UFR_MAGIC = b"UFR1"
UFR_CONTENT_TYPE = "application/vnd.usersignals.ufr"


@lru_cache(maxsize=200_000)
def item_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") >> 1


def to_json(users: list[UserSequences], registry: Registry) -> list[dict]:
    """Per user: ``sequences`` (dataset -> events, newest first), ``event_types`` (dataset ->
    its event type), ``views``."""
    out = []
    for u in users:
        types = {ds: registry.datasets[ds].event_type for ds in u.sequences}
        # Sequences nobody had to touch are still the KV layer's JSON: embed them as they are.
        seqs = {ds: orjson.Fragment(v) if isinstance(v, bytes) else v for ds, v in u.sequences.items()}
        out.append({"user_id": u.user_id, "sequences": seqs, "event_types": types, "views": u.views})
    return out


def ufr_layout(tenant: Tenant, registry: Registry, embedding_dim: int | None) -> list[tuple[str, str, tuple]]:
    """(name, dtype, per-user shape) of every array, in order: the declared layout."""
    layout = []
    for ds, length in tenant.sequences.items():
        layout += [(f"{ds}.item_hash", "<i8", (length,)), (f"{ds}.type_id", "<i2", (length,)),
                   (f"{ds}.age_s", "<f4", (length,)), (f"{ds}.dwell_ms", "<f4", (length,)),
                   (f"{ds}.mask", "u1", (length,))]
        if embedding_dim is not None:
            layout.append((f"{ds}.embedding", "<f4", (length, embedding_dim)))
    return layout


def has_embedding(tenant: Tenant, registry: Registry) -> bool:
    return "embedding" in registry.fields_of(tenant.enrichments)


def to_arrays(users: list[UserSequences], tenant: Tenant, registry: Registry, now_ms: int,
              embedding_dim: int = EMBEDDING_DIM) -> dict[str, np.ndarray]:
    dim = embedding_dim if has_embedding(tenant, registry) else None
    b = len(users)
    arrays = {name: np.zeros((b, *shape), dtype=dtype) for name, dtype, shape in ufr_layout(tenant, registry, dim)}
    for ds in tenant.sequences:
        type_id = registry.event_types[registry.datasets[ds].event_type].id
        ih, ti, age, dw, mask = (arrays[f"{ds}.{k}"] for k in ("item_hash", "type_id", "age_s", "dwell_ms", "mask"))
        emb = arrays.get(f"{ds}.embedding")
        for row, u in enumerate(users):
            for col, e in enumerate(u.sequences.get(ds, ())):
                ih[row, col] = item_hash(e["item_id"])
                ti[row, col] = type_id
                age[row, col] = (now_ms - e["ts"]) / 1000.0
                dw[row, col] = e.get("dwell_ms") or 0
                mask[row, col] = 1
                if emb is not None:
                    vec = e.get("features", {}).get("embedding")
                    if vec is not None and len(vec) == dim:
                        emb[row, col] = vec
    return arrays


def arrays_to_json(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {name: a.tolist() for name, a in arrays.items()}


def encode_ufr(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    specs, chunks, offset = [], [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        pad = (-offset) % 8
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                      "nbytes": a.nbytes})
        chunks.append(a.tobytes())
        offset += a.nbytes
    header = orjson.dumps({**meta, "arrays": specs})
    return UFR_MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def decode_ufr(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    if data[:4] != UFR_MAGIC:
        raise ValueError("not a UFR1 payload")
    (n,) = struct.unpack("<I", data[4:8])
    header = orjson.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    arrays = {s["name"]: np.frombuffer(body[s["offset"]:s["offset"] + s["nbytes"]], dtype=s["dtype"])
              .reshape(s["shape"]) for s in header["arrays"]}
    return header, arrays
