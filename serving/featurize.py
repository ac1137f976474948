"""Stage 5, featurize: turn sized sequences into what a consumer reads.

``json``: per user, each sequence as a list of events (ids, time, surface, dwell, query,
features), each sequence's event type, and the tenant's aggregate views.

``arrow`` (model-ready): for a batch of B users, one Arrow record batch with a row per user
(in request order) and, per dataset ``<ds>`` of tenant length L, fixed-size list columns,
left-aligned (index 0 = newest), zero where ``mask`` is 0:

    user_id           utf8
    <ds>.item_hash    fixed_size_list<int64, L>     stable 63-bit hash of item_id (blake2b)
    <ds>.type_id      fixed_size_list<int16, L>     event type id from the registry
    <ds>.age_s        fixed_size_list<float32, L>   request time minus event time, seconds
    <ds>.dwell_ms     fixed_size_list<float32, L>   0 when unknown
    <ds>.mask         fixed_size_list<uint8, L>     1 for a real event, 0 for padding
    <ds>.embedding    fixed_size_list<fixed_size_list<float32, D>, L>
                      only when the tenant's enrichments provide "embedding"

The schema's metadata carries ``tenant``, ``config_version``, ``request_id`` and ``views``
(a JSON list, one object per row). With ``Accept: application/vnd.apache.arrow.stream`` the
response is that batch as an Arrow IPC stream, which any Arrow reader decodes
(``pyarrow.ipc.open_stream``, arrow-rs, Arrow Java, ``apache-arrow`` in JS ...); otherwise
the same arrays as JSON lists (``{"arrays": {name: [[...], ...]}}``).

Columns are built per dataset from all users' events (a list per field: item hash, time,
dwell; embeddings joined as float32 bytes from the enricher's cache), then placed into the
padded [B, L] blocks by numpy, not event by event. The Arrow stream is written from a template
of the batch's shape (``arrow_stream``): the same bytes as pyarrow's stream writer.
"""
from __future__ import annotations

import struct
from itertools import accumulate

import numpy as np
import orjson
import pyarrow as pa  # at import, not in the first Arrow request (an import of ~0.1 s past a 50 ms timeout)

from usersignals.registry import Registry, Tenant

from serving.columns import Columns, item_hash  # noqa: F401 (item_hash: the API's, imported from here)
from serving.enrich import EMBEDDING_F32
from serving.model import UserSequences

ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"


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


def has_embedding(tenant: Tenant, registry: Registry) -> bool:
    return "embedding" in registry.fields_of(tenant.enrichments)


FIELDS = (("item_hash", np.int64), ("type_id", np.int16), ("age_s", np.float32), ("dwell_ms", np.float32),
          ("mask", np.uint8))


def layout(tenant: Tenant, registry: Registry, embedding_dim: int | None) -> list[tuple[str, np.dtype, tuple]]:
    """(name, dtype, per-user shape) of every array after ``user_id``, in column order."""
    out = []
    for ds, length in tenant.sequences.items():
        out += [(f"{ds}.{f}", np.dtype(t), (length,)) for f, t in FIELDS]
        if embedding_dim is not None:
            out.append((f"{ds}.embedding", np.dtype(np.float32), (length, embedding_dim)))
    return out


def to_arrays(users: list[UserSequences], tenant: Tenant, registry: Registry, now_ms: int,
              embedding_dim: int | None = None, items: dict | None = None) -> dict[str, np.ndarray]:
    """The model-ready arrays, [B, L] (embedding [B, L, D]), keyed by column name. ``items``
    (the enricher's item features) lets embeddings be joined as float32 bytes in one pass."""
    embedding_dim = embedding_dim or registry.model.embedding_dim
    dim = embedding_dim if has_embedding(tenant, registry) else None
    b = len(users)
    arrays: dict[str, np.ndarray] = {}
    for ds, length in tenant.sequences.items():
        per_user = [u.sequences.get(ds, ())[:length] for u in users]
        cols = [s if isinstance(s, Columns) else Columns.of_events(s) for s in per_user]
        if b == 1:
            hashes, ts, dwell = cols[0].item_hash, cols[0].ts, cols[0].dwell_ms
        else:
            hashes, ts, dwell = (np.concatenate([getattr(c, f) for c in cols or [Columns.of_events(())]])
                                 for f in ("item_hash", "ts", "dwell_ms"))
        # Where the events go in [B, L]: left-aligned rows; in row-major order, so a boolean
        # mask takes the flat values in order. One user (the common request) is a plain slice.
        if b == 1:
            where: object = (0, slice(0, len(hashes)))
        else:
            where = np.arange(length) < np.array([len(c) for c in cols])[:, None]

        def place(values, dtype, inner: int | None = None) -> np.ndarray:
            out = np.zeros((b, length) if inner is None else (b, length, inner), dtype=dtype)
            out[where] = values
            return out

        type_id = registry.event_types[registry.datasets[ds].event_type].id
        arrays[f"{ds}.item_hash"] = place(hashes, np.int64)
        arrays[f"{ds}.type_id"] = place(type_id, np.int16)
        arrays[f"{ds}.age_s"] = place((now_ms - ts) / 1000.0, np.float32)
        arrays[f"{ds}.dwell_ms"] = place(dwell, np.float32)
        arrays[f"{ds}.mask"] = place(1, np.uint8)
        if dim is not None:
            flat_ids = [i for c in cols for i in c.item_ids]
            arrays[f"{ds}.embedding"] = place(_embeddings(flat_ids, per_user, dim, items, registry.model.embedding_dim),
                                              np.float32, dim)
    return arrays


def _embeddings(ids: list[str], per_user: list, dim: int, items: dict | None, cached_dim: int) -> np.ndarray:
    """[n, dim] float32: each event's item embedding, zeros where it has none of that size.
    ``cached_dim``: the size the enricher cached float32 bytes for (the registry's). Without
    the enricher's items, each event's own features (decoded events only)."""
    zero = bytes(4 * dim)
    if items is not None and dim == cached_dim:
        blobs = [(items.get(i) or _NONE).get(EMBEDDING_F32, zero) for i in ids]
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), dim)
    vecs = [v for evs in per_user  # no enricher cache: the events' lists
            for v in ([None] * len(evs) if isinstance(evs, Columns) else
                      (e.get("features", _NONE).get("embedding") for e in evs))]
    return np.array([v if v is not None and len(v) == dim else (0.0,) * dim for v in vecs],
                    dtype=np.float32).reshape(len(ids), dim)


_NONE: dict = {}


def _fixed(a: np.ndarray):
    """[B, L] or [B, L, D] numpy array -> Arrow fixed-size list column, without copying."""
    values = pa.array(a.reshape(-1))
    if a.ndim == 3:
        values = pa.FixedSizeListArray.from_arrays(values, a.shape[2])
    return pa.FixedSizeListArray.from_arrays(values, a.shape[1])


def to_arrow(user_ids: list[str], arrays: dict[str, np.ndarray], meta: dict):
    """The model-ready arrays as one Arrow record batch, a row per user; ``meta`` (JSON-able
    values) goes into the schema metadata."""
    columns = [pa.array(user_ids, pa.string())] + [_fixed(a) for a in arrays.values()]
    return pa.RecordBatch.from_arrays(columns, names=["user_id", *arrays],
                                      metadata={k: orjson.dumps(v) for k, v in meta.items()})


def encode_arrow(batch) -> bytes:
    """The reference encoder (pyarrow's stream writer); ``arrow_stream`` writes the same bytes
    faster for the API."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an IPC stream's end


class _Template:
    """One encoded record batch of a given shape (columns, their types and sizes, rows, bytes of
    user ids), with where each buffer lies in it. Record batches of that shape differ only in
    their buffers' bytes: a request copies its arrays into a copy of the template, in place of
    ~20 pyarrow calls per request (~0.2 ms of API CPU for the home feed)."""

    __slots__ = ("schema", "message", "body_at", "spans")

    def __init__(self, user_ids: list[str], arrays: dict[str, np.ndarray]):
        batch = to_arrow(user_ids, {n: np.zeros_like(a) for n, a in arrays.items()}, {})
        self.schema = batch.schema
        self.message = batch.serialize().to_pybytes()  # encapsulated: metadata, then the body
        message = pa.ipc.read_message(self.message)
        body = message.body
        self.body_at = len(self.message) - body.size
        read = pa.ipc.read_record_batch(message, self.schema)
        # (offset in the message, size) of each column's non-empty buffers, in column order;
        # the buffers of ``read`` are slices of ``body``
        self.spans = [[(self.body_at + b.address - body.address, b.size) for b in column.buffers()
                       if b is not None and b.size] for column in read.columns]


_TEMPLATES: dict[tuple, _Template] = {}


def arrow_stream(user_ids: list[str], arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    """``encode_arrow(to_arrow(user_ids, arrays, meta))``, the same Arrow IPC stream, from a
    template of the batch's shape (built once per shape, kept for the 512 last shapes)."""
    ids = [u.encode() for u in user_ids]
    id_bytes = b"".join(ids)
    key = (len(ids), len(id_bytes), *((n, a.dtype.char, a.shape) for n, a in arrays.items()))
    t = _TEMPLATES.get(key)
    if t is None:
        if len(_TEMPLATES) >= 512:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        t = _TEMPLATES[key] = _Template(user_ids, arrays)
    out = bytearray(t.message)
    (offsets_at, _), *data = t.spans[0]
    offsets = struct.pack(f"<{len(ids) + 1}i", *accumulate(map(len, ids), initial=0))
    out[offsets_at:offsets_at + len(offsets)] = offsets
    if data:  # no data buffer when every id is ""
        out[data[0][0]:data[0][0] + len(id_bytes)] = id_bytes
    for spans, a in zip(t.spans[1:], arrays.values()):
        if spans:  # none for a column of zero bytes (a tenant length of 0)
            v = memoryview(np.ascontiguousarray(a)).cast("B")
            out[spans[0][0]:spans[0][0] + len(v)] = v
    schema = t.schema.with_metadata({k: orjson.dumps(v) for k, v in meta.items()}).serialize()
    return b"".join((schema.to_pybytes(), out, _EOS))


def decode_arrow(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {name: numpy array [B, L] / [B, L, D]}) of an Arrow response (``user_id`` too)."""
    table = pa.ipc.open_stream(data).read_all()
    meta = {k.decode(): orjson.loads(v) for k, v in (table.schema.metadata or {}).items()}
    arrays = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            shape = [len(col)]
            while pa.types.is_fixed_size_list(col.type):
                shape.append(col.type.list_size)
                col = col.flatten()
            arrays[name] = col.to_numpy(zero_copy_only=False).reshape(shape)
        else:
            arrays[name] = np.asarray(col.to_pylist(), dtype=object)
    return meta, arrays


def arrays_to_json(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {name: a.tolist() for name, a in arrays.items()}
