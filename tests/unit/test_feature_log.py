"""The served-features record: what a rebuild needs to join the same item embeddings."""
import orjson

from serving.feature_log import FeatureLogger


class Producer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, key, value):
        self.sent.append((topic, key, orjson.loads(value)))

    def poll(self, timeout):
        pass


def logged(embedding_version):
    producer = Producer()
    features = {"user_id": "u1", "sequences": {"clicks": []}}
    FeatureLogger(None, "served", producer=producer).log("r1", "home", 3, "json", [("u1", features)],
                                                         embedding_version)
    assert features == {"user_id": "u1", "sequences": {"clicks": []}}  # the response itself is not changed
    [(topic, key, record)] = producer.sent
    assert (topic, key, record["request_id"], record["tenant"], record["config_version"]) == \
        ("served", b"u1", "r1", "home", 3)
    return record["features"]


def test_a_tenant_served_embeddings_logs_the_published_version_they_came_from():
    assert logged("v7")["embedding_version"] == "v7"
    assert logged(None)["embedding_version"] is None  # served, before any version was published


def test_a_tenant_without_embeddings_logs_exactly_what_it_was_served():
    assert logged(False) == {"user_id": "u1", "sequences": {"clicks": []}}
