"""The fault harness's own counting: which acked events the KV layer must hold, what a bad response is."""
from bench.faults import Acked, expected_in_kv, response_problems


def test_expected_in_kv_keeps_the_newest_n_per_user_and_dataset():
    acked = [Acked(f"e{n}", "u1", "repins", 1000 + n) for n in range(25)]          # retention 3 below
    acked += [Acked("late", "u1", "repins", 5)]                                      # old: falls out
    acked += [Acked("x1", "u2", "repins", 7), Acked("c1", "u1", "clicks", 1)]
    got = expected_in_kv(acked, {"repins": 3, "clicks": 100})
    assert got[("u1", "repins")] == {"e24", "e23", "e22"}
    assert got[("u2", "repins")] == {"x1"}
    assert got[("u1", "clicks")] == {"c1"}


def test_expected_in_kv_breaks_ties_on_event_id_like_the_store():
    # The store's ZSET orders equal scores by member, newest first = highest id first.
    acked = [Acked("a", "u", "repins", 10), Acked("b", "u", "repins", 10), Acked("c", "u", "repins", 10)]
    assert expected_in_kv(acked, {"repins": 2})[("u", "repins")] == {"c", "b"}


def test_response_problems_counts_duplicates_and_misordering():
    body = {"users": [{"user_id": "u", "sequences": {
        "clicks": [{"event_id": "a", "ts": 3}, {"event_id": "b", "ts": 2}, {"event_id": "a", "ts": 3}],
        "views": [{"event_id": "v1", "ts": 1}, {"event_id": "v2", "ts": 2}]}}]}
    assert response_problems(body) == (1, 2)  # one duplicate; clicks 2<3 and views 1<2 out of order
    assert response_problems({"users": [{"sequences": {"clicks": []}}]}) == (0, 0)


def test_describe_timing_names_the_fault_before_the_ack():
    from bench.faults import describe_timing

    kills = [("kv", 100.0), ("broker", 200.0)]
    assert describe_timing(199.8, 203.5, kills) == "sent -0.20 s, acked +3.50 s from the kill of broker"
    assert describe_timing(150.0, 150.1, kills) == "sent +50.00 s, acked +50.10 s from the kill of kv"
    assert describe_timing(10.0, 10.25, kills) == "sent, acked 0.25 s later, before any fault"
