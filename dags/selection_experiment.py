"""Materialise an alternative event-selection rule for experiments.

Chooses each user's N events of a dataset by another rule than "last N" (longest dwell,
or closest to the user's mean item embedding), writes them to ``selected_sequences``
(partition = experiment) and to KV dataset ``exp_<experiment>`` for offline evaluation. The
events are those of the N days before the run's data interval end, so a re-run selects the same.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import AS_OF, REGISTRY, spark_job, usersignals_dag

with usersignals_dag(
    dag_id="selection_experiment",
    description="Materialise sequences chosen by an alternative selection rule",
    schedule=None,
    tags=["experiments"],
    doc_md=__doc__,
    timeout_h=2,
    params={
        "experiment": Param("dwell_top", type="string", pattern="^[A-Za-z0-9_]{1,40}$", title="Experiment name",
                            description="Names the partition of selected_sequences and KV dataset exp_<name>"),
        "dataset": Param(sorted(REGISTRY.datasets)[0], type="string", enum=sorted(REGISTRY.datasets),
                         description="The dataset whose events are selected"),
        "rule": Param("dwell", type="string", enum=["last", "dwell", "similarity"],
                      description="last = production rule; dwell = longest dwell; similarity = embedding"),
        "n": Param(50, type="integer", minimum=1, maximum=1000, description="Events per user"),
        "days": Param(30, type="integer", minimum=1, maximum=365,
                      description="Days of events to choose from, ending at the run's data interval end"),
    },
    ) as dag:
    spark_job("select", ["select", "--experiment", "{{ params.experiment }}", "--dataset", "{{ params.dataset }}",
                         "--rule", "{{ params.rule }}", "--n", "{{ params.n }}", "--days", "{{ params.days }}",
                         "--as-of", AS_OF])
