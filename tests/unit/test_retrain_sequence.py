"""The sequence model's scoring (batch.retrain): an exponentially time-decayed mean of the
sequence's item embeddings, ranked by dot product, computed by hand on small cases."""
import datetime as dt
import tomllib

import numpy as np
import pytest

from batch.retrain import decayed_mean, sequence_lengths, sequence_profiles, top_k
from usersignals.registry import DEFAULT_REGISTRY_PATH, load_registry, parse_registry

H = 3600.0
OLD, NEW = np.array([1.0, 0.0]), np.array([0.0, 1.0])


def test_half_life_makes_the_newer_item_win_over_a_longer_older_interest():
    # Three old events (48, 72, 96 h ago) and one new (now); half-life 24 h:
    # weights 1/4, 1/8, 1/16 and 1 -> mean (7/16, 1) / (23/16) = (7/23, 16/23).
    embeddings = np.stack([OLD, OLD, OLD, NEW])
    ages = np.array([48, 72, 96, 0]) * H
    profile = decayed_mean(embeddings, ages, 24 * H)
    assert profile == pytest.approx([7 / 23, 16 / 23])
    assert top_k(profile[None, :], np.stack([OLD, NEW]), 2)[0].tolist() == [1, 0]  # the new item first

    # Without decay to speak of (a half-life of ~30 years), it is the plain mean: the old interest wins.
    flat = decayed_mean(embeddings, ages, 1e9)
    assert flat == pytest.approx([0.75, 0.25], abs=1e-4)
    assert top_k(flat[None, :], np.stack([OLD, NEW]), 2)[0].tolist() == [0, 1]


def test_one_half_life_older_counts_half():
    # Weights 1 and 1/2 -> (1/2, 1) / (3/2) = (1/3, 2/3).
    assert decayed_mean(np.stack([OLD, NEW]), np.array([10 * H, 9 * H]), H) == pytest.approx([1 / 3, 2 / 3])


def test_a_sequence_many_half_lives_old_does_not_underflow():
    profile = decayed_mean(np.stack([OLD, NEW]), np.array([1e7 * H + H, 1e7 * H]), H)
    assert profile == pytest.approx([1 / 3, 2 / 3])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="half-life must be positive"):
        decayed_mean(np.stack([OLD]), np.array([0.0]), 0)
    with pytest.raises(ValueError, match="2 embeddings, 1 ages"):
        decayed_mean(np.stack([OLD, NEW]), np.array([0.0]), H)


def test_profiles_skip_items_without_an_embedding_and_users_with_none():
    items = {"a": OLD.astype(np.float32), "b": NEW.astype(np.float32)}
    sequences = {"u1": [("a", 2 * H), ("zz", 0.0), ("b", H)], "u2": [("zz", 0.0)]}
    profiles = sequence_profiles(sequences, items, H)
    assert set(profiles) == {"u1"}  # u2's only item is unknown to the model
    assert profiles["u1"] == pytest.approx([1 / 3, 2 / 3])  # "zz" left out, not a zero vector in the mean


def test_sequence_lengths_are_every_realtime_dataset_at_its_retention_or_less():
    registry = load_registry()
    assert sequence_lengths(registry) == {d: ds.retention for d, ds in registry.datasets.items()}
    assert sequence_lengths(registry)["views"] == 200 and sequence_lengths(registry)["repins"] == 20
    capped = sequence_lengths(registry, 50)
    assert capped["views"] == 50 and capped["clicks"] == 50 and capped["repins"] == 20  # capped by retention
    with pytest.raises(ValueError, match="seq_length must be a positive number of events, got 0"):
        sequence_lengths(registry, 0)


def test_an_experiments_datasets_are_not_sequences_of_the_model():
    """exp_<name>_<rule> holds a rule's selection of closeups: counting it would add closeups twice."""
    raw = tomllib.loads(DEFAULT_REGISTRY_PATH.read_text())
    raw["experiments"] = {"t": {"dataset": "closeups", "rules": ["last", "dwell"], "n": 5, "ends": dt.date(2099, 1, 1)}}
    registry = parse_registry(raw)
    assert "exp_t_dwell" in registry.datasets
    assert set(sequence_lengths(registry)) == set(registry.realtime_datasets()) == set(load_registry().datasets)
