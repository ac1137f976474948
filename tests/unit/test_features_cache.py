from usersignals.features import CachedFeatures


class Source:
    def __init__(self):
        self.calls = 0
        self.data = {"a": {"category": "c1"}}

    def get_many(self, ids):
        self.calls += 1
        return {i: self.data[i] for i in ids if i in self.data}


def test_hits_misses_absent_items_and_expiry():
    t = [0.0]
    src = Source()
    cache = CachedFeatures(src, ttl_s=10, clock=lambda: t[0])
    assert cache.get_many(["a", "b", "a"]) == {"a": {"category": "c1"}, "b": None}
    assert src.calls == 1
    cache.get_many(["a", "b"])
    assert src.calls == 1  # absent items are cached too
    t[0] = 11
    src.data["b"] = {"category": "c2"}
    assert cache.get_many(["b"]) == {"b": {"category": "c2"}}
    assert src.calls == 2


def test_size_is_bounded_lru():
    cache = CachedFeatures(Source(), max_items=3)
    for k in "abcde":
        cache.get_many([k])
    assert len(cache) == 3


def test_a_new_embedding_version_empties_the_cache_at_once():
    src = Source()
    src.version = "v1"
    src.embedding_version = lambda: src.version
    cache = CachedFeatures(src, ttl_s=100)
    cache.get_many(["a"])
    cache.get_many(["a"])
    assert src.calls == 1
    src.version = "v2"  # published: every cached item refetched, none mixed from v1
    cache.get_many(["a"])
    assert src.calls == 2 and len(cache) == 1
