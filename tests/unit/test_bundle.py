import threading

import pytest

from streaming import bundle


def test_flushes_run_once_at_the_end_of_the_bundle_of_their_thread():
    ran = []
    bundle.pending(lambda: ran.append("a"))
    other = threading.Thread(target=lambda: bundle.pending(lambda: ran.append("other-thread")))
    other.start()
    other.join()
    bundle.finish_current_bundle()
    assert ran == ["a"]
    bundle.finish_current_bundle()
    assert ran == ["a"]


def test_a_failing_flush_propagates_and_keeps_the_rest_scheduled():
    ran = []

    def boom():
        raise ConnectionError("down")

    bundle.pending(boom)
    bundle.pending(lambda: ran.append("b"))
    with pytest.raises(ConnectionError):
        bundle.finish_current_bundle()
    bundle.finish_current_bundle()
    assert ran == ["b"]
