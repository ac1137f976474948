"""usersignals.lake.with_retries: an Iceberg commit that loses an optimistic-concurrency race is
retried with a jittered doubling backoff; any other error, and the last conflict, reach the caller."""
import logging
import re

import pytest
from pyiceberg.exceptions import CommitFailedException

from usersignals.lake import with_retries


class Commit:
    """A commit that conflicts ``conflicts`` times, then succeeds (or raises ``then``)."""

    def __init__(self, conflicts: int, then: Exception | None = None):
        self.conflicts = conflicts
        self.then = then
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.conflicts:
            raise CommitFailedException(f"conflict {self.calls}")
        if self.then is not None:
            raise self.then
        return f"snapshot after {self.calls} attempts"


def logged_delays(caplog) -> list[float]:
    return [float(re.search(r"retrying in ([0-9.]+)s", r.getMessage()).group(1)) for r in caplog.records]


def test_conflicts_are_retried_until_the_commit_lands_with_a_doubling_jittered_backoff(caplog):
    commit = Commit(conflicts=3)
    with caplog.at_level(logging.WARNING, logger="usersignals.lake"):
        assert with_retries(commit, "append lake.raw_events", base_s=0.01) == "snapshot after 4 attempts"
    assert commit.calls == 4
    assert [r.getMessage().split(" failed")[0] for r in caplog.records] == [
        "append lake.raw_events: commit attempt 1", "append lake.raw_events: commit attempt 2",
        "append lake.raw_events: commit attempt 3"]
    # attempt n waits 0.01 * 2**(n-1) times a factor in [0.5, 1.5), rounded to 2 places in the log
    for n, delay in enumerate(logged_delays(caplog), start=1):
        assert 0.01 * 2 ** (n - 1) * 0.5 - 0.005 <= delay <= 0.01 * 2 ** (n - 1) * 1.5 + 0.005, (n, delay)


def test_an_error_that_is_not_a_conflict_is_raised_at_once():
    commit = Commit(conflicts=0, then=ValueError("column user_id: expected string, got int"))
    with pytest.raises(ValueError, match="expected string"):
        with_retries(commit, "append lake.raw_events", base_s=0.01)
    assert commit.calls == 1


def test_an_error_after_a_conflict_is_raised_without_more_attempts():
    commit = Commit(conflicts=1, then=OSError("warehouse unreachable"))
    with pytest.raises(OSError, match="warehouse unreachable"):
        with_retries(commit, "append lake.raw_events", base_s=0.001)
    assert commit.calls == 2


def test_the_last_conflict_is_raised_itself_after_every_attempt_is_spent(caplog):
    commit = Commit(conflicts=10)
    with caplog.at_level(logging.WARNING, logger="usersignals.lake"):
        with pytest.raises(CommitFailedException, match="conflict 4"):
            with_retries(commit, "append lake.raw_events", attempts=4, base_s=0.001)
    assert commit.calls == 4
    assert len(caplog.records) == 3  # no "retrying" after the last attempt
