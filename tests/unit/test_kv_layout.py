"""Key design of the KV layer: cluster hash tags and unambiguous keys."""
import pytest

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


# Legacy ids (stored before the identifier rule) and the rule's own: the layout must hold for both.
USERS = ["a", "a}:views", "a}", "a:", "u*", "u1", "u'cli\\", "a}:clicks:z", "ユーザー🙂", "a.b+c@x.com"]


def every_key(s, users):
    return {k: u for u in users for ds in ("clicks", "views", "exp_dwell2")
            for k in (s.seq_key(ds, u), s.events_key(ds, u))}


def test_each_key_parses_back_to_its_one_user_and_dataset():
    s = store()
    for user in USERS:
        for ds in ("clicks", "exp_dwell2"):
            assert s.key_owner(s.seq_key(ds, user)) == (user, ds)
            assert s.key_owner(s.events_key(ds, user).encode()) == (user, ds)
    for other in ("us:{a}:agg", "us:dirty:{3}", "us:item:i1", "us:{a}:Clicks:z", "us:{a}:views}:x:y",
                  "t:{a}:clicks:z", "us:{a:clicks:z", "us:{a}:clicks:zz", "us:{a}::z", b"us:{\xff}:clicks:z"):
        assert s.key_owner(other) is None, other


def test_no_key_of_one_user_is_taken_by_another_users_erasure():
    """The bug: erasing "a" kept every found key starting with "us:{a}:", so it took the keys of
    "a}:views" (us:{a}:views}:clicks:z, same cluster slot). Each user's erasure must take exactly
    its own keys out of everything a SCAN or CLUSTER GETKEYSINSLOT can return."""
    s = store()
    found = every_key(s, USERS)
    noise = [b"us:{a}:agg", b"us:dirty:{3}", b"us:{a}:views}:Bad:z", "us:{a}x:clicks:z".encode()]
    for user in USERS:
        taken = s.dataset_keys_of(user, [k.encode() for k in found] + noise)
        own = {k for k, u in found.items() if u == user} | {
            k for ds in s.registry.datasets for k in (s.seq_key(ds, user), s.events_key(ds, user))}
        assert set(taken) == own, user
        assert len(taken) == len(own)


def test_the_erasures_counts_and_dirty_members_name_the_dataset_not_the_rest_of_a_key():
    s = store()
    keys = s.dataset_keys_of("a}:views", [s.seq_key("exp_dwell2", "a}:views")])
    sizes = [3 if k.endswith(":z") else 0 for k in keys]
    assert s.removed_per_dataset("a}:views", keys, sizes) == {f"kv.{ds}": 3 for ds in [*s.registry.datasets,
                                                                                       "exp_dwell2"]}
    assert s._dirty_members("a}:views", keys) == sorted(f"{ds}:a}}:views" for ds in [*s.registry.datasets,
                                                                                      "exp_dwell2"])
    with pytest.raises(ValueError, match="not a sequence or payload key of user 'a'"):
        s.removed_per_dataset("a", [s.seq_key("clicks", "a}:views")], [1])


def test_a_dirty_member_parses_by_the_dataset_name():
    """ "<dataset>:<user_id>": a dataset has no ':', so the first ':' ends it, whatever the user holds."""
    s = store()
    for user in USERS:
        dataset, _, parsed = f"clicks:{user}".partition(":")
        assert (dataset, parsed) == ("clicks", user)
        assert s.seq_key(dataset, parsed) == s.seq_key("clicks", user)


def test_dirty_buckets_spread_users_and_are_stable():
    s = store()
    buckets = {s.bucket_of(f"u{i}") for i in range(1000)}
    assert buckets == set(range(DIRTY_BUCKETS))
    # Stable across processes and releases (a user's dirty set must not move): golden values.
    assert [s.bucket_of(u) for u in ("u7", "u42", "alice")] == GOLDEN_BUCKETS
    assert hash_tag(s.dirty_key(3)) == "3"
