"""Key design of the KV layer: cluster hash tags and unambiguous keys."""
from usersignals.kv import DIRTY_BUCKETS, SequenceStore
from usersignals.registry import load_registry


GOLDEN_BUCKETS = [3, 14, 7]  # crc32 of the user id, mod 16 (zlib.crc32(b"u7") % 16 == 3)


def store():
    # register_script only wraps the text; no server is touched here.
    class NoServer:
        def register_script(self, text):
            return text

    return SequenceStore(NoServer(), load_registry(), prefix="us")


def hash_tag(key: str) -> str:
    """Redis Cluster's rule: the part between the first '{' and the next '}'."""
    start = key.index("{")
    end = key.index("}", start + 1)
    return key[start + 1:end]


def test_all_keys_of_a_user_share_one_hash_tag_so_one_slot():
    s = store()
    keys = [f(ds, "u42") for ds in ("clicks", "views") for f in (s.seq_key, s.events_key)]
    assert {hash_tag(k) for k in keys} == {"u42"}


def test_sequence_and_event_keys_differ_per_dataset_and_kind():
    s = store()
    keys = {s.seq_key("clicks", "u1"), s.events_key("clicks", "u1"), s.seq_key("views", "u1")}
    assert len(keys) == 3
    assert s.seq_key("clicks", "u1") == "us:{u1}:clicks:z"


def test_user_ids_with_separators_cannot_collide_with_other_users():
    s = store()
    # Dataset names cannot contain ':' or '}', so the suffix always parses back.
    a = s.seq_key("clicks", "a}:views")
    b = s.seq_key("views", "a")
    assert a != b


def test_dirty_buckets_spread_users_and_are_stable():
    s = store()
    buckets = {s.bucket_of(f"u{i}") for i in range(1000)}
    assert buckets == set(range(DIRTY_BUCKETS))
    # Stable across processes and releases (a user's dirty set must not move): golden values.
    assert [s.bucket_of(u) for u in ("u7", "u42", "alice")] == GOLDEN_BUCKETS
    assert hash_tag(s.dirty_key(3)) == "3"
