"""kill -9 each part of the running stack under load (bench.faults, shorter): the platform loses
nothing the broker holds, serves no duplicate, lands every held event in the lake once.

The full run with its JSON line is `make test-faults`. Events the local broker (tansu on S3)
acknowledged and then lost in its own crash are counted apart (`lost_by_broker`): no part of
the platform can bring back what the broker no longer has; they are printed, not hidden.
"""
import json

from bench.faults import FAULTS, run


def test_kill_minus_nine_of_every_part_loses_nothing_the_broker_kept(capsys):
    result = run(rate=100.0, steady_s=8.0, faults=FAULTS)
    with capsys.disabled():
        print("\n" + json.dumps(result))
    assert result["acked"] > 1000
    assert set(result["recovery_s"]) == set(FAULTS)
    assert result["lost_by_platform"] == 0, result
    assert result["duplicates_served"] == 0 and result["misordered_served"] == 0, result
    assert result["duplicates_lake"] == 0, result
    assert result["responses"] > 1000
