"""bench.floor_api, the no-work server of make bench-serving's floor: a body of exactly the
asked size, and an app that reads the whole request before it answers."""
import asyncio

import orjson
import pytest

from bench.floor_api import body_of, make_app


@pytest.mark.parametrize("size", [10, 11, 46804])
def test_the_body_is_json_of_exactly_the_asked_size(size):
    body = body_of(size)
    assert len(body) == size
    assert orjson.loads(body) == {"pad": "x" * (size - 10)}


def test_a_body_too_small_for_json_is_refused():
    with pytest.raises(ValueError, match="at least 10 bytes, not 9"):
        body_of(9)


def test_the_app_reads_a_body_in_chunks_then_answers_200_with_its_length():
    body = body_of(500)
    chunks = [{"type": "http.request", "body": b"{\"a\":", "more_body": True},
              {"type": "http.request", "body": b"1}", "more_body": False}]
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(make_app(body)({"type": "http"}, receive, send))
    assert chunks == []  # every chunk read before the answer
    assert sent == [{"type": "http.response.start", "status": 200,
                     "headers": [(b"content-type", b"application/json"), (b"content-length", b"500")]},
                    {"type": "http.response.body", "body": body}]
