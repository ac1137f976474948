"""Compare event-selection rules, serve a registered experiment, clean up ended ones.

``cleanup`` first removes what ended experiments left (registry ``[experiments.<name>]`` whose
``ends`` has come, or experiments no longer registered): their KV datasets ``exp_<name>_<rule>``
and their ``selected_sequences`` partition. ``select`` then runs every chosen rule (the registry's
``[selection_rules]``; ``last``, the baseline, always) over the ``days`` days before the last
complete UTC day before the run's moment, and scores each rule's ``n`` events per user against
that day's engagement (the day after the window): recall@n and NDCG@n, lift vs ``last``, into
``selection_reports`` and an SVG chart (``<data_dir>/reports/selection/<experiment>/<day>.svg``).
When the experiment is registered (with the same dataset and n), its rules' selections also
replace its ``selected_sequences`` partition and its KV datasets, which tenants can serve.
See docs/operations/experiments.md.
"""
from __future__ import annotations

from airflow.sdk import Param

from _usersignals import AS_OF, REGISTRY, spark_job, usersignals_dag

RULES = sorted(REGISTRY.selection_rules)
DATASETS = sorted(REGISTRY.realtime_datasets())
REGISTERED = ", ".join(f"{e.name} ({e.dataset}, n={e.n}, ends {e.ends})" for e in REGISTRY.experiments.values())

with usersignals_dag(
    dag_id="selection_experiment",
    description="Compare event-selection rules on next-day engagement; serve and clean up experiments",
    schedule=None,
    tags=["experiments"],
    doc_md=__doc__,
    timeout_h=2,
    params={
        "experiment": Param("dwell_vs_last", type="string", pattern="^[a-z][a-z0-9_]{0,39}$",
                            title="Experiment name",
                            description="Names the report rows; a registered experiment is also served. "
                                        f"Registered: {REGISTERED or 'none'}"),
        "dataset": Param(DATASETS[0], type="string", enum=DATASETS,
                         description="The dataset whose events are selected"),
        "rules": Param(RULES, type="array", items={"type": "string", "enum": RULES}, minItems=1,
                       description="Selection rules to compare (registry [selection_rules]); last is always "
                                   "included as the baseline"),
        "n": Param(50, type="integer", minimum=1, maximum=1000, description="Events per user (the k of recall@k)"),
        "days": Param(30, type="integer", minimum=1, maximum=365,
                      description="Days of events to choose from, ending where the scored day (the last complete one) starts"),
    },
    ) as dag:
    cleanup = spark_job("cleanup", ["select-cleanup", "--as-of", AS_OF])
    select = spark_job("select", ["select", "--experiment", "{{ params.experiment }}",
                                  "--dataset", "{{ params.dataset }}", "--rules", "{{ params.rules | join(',') }}",
                                  "--n", "{{ params.n }}", "--days", "{{ params.days }}", "--as-of", AS_OF])
    cleanup >> select
