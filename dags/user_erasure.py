"""User erasure, the lake's part: an Airflow DAG completing the erasures requested through the API.

``DELETE /v1/admin/users/{user_id}`` deletes the user's KV state at once and records a request;
this DAG runs ``python -m batch delete-user --pending``: for each request, row-level deletes of
the user's rows in every lake table with user rows (what arrived up to the request), one audit
row in ``deletions`` (who, when, counts; no data), then the request is completed. The deleted
rows leave the data files at the next compaction (``lake_maintenance``, an hour later), and the
disk when the snapshots from before it expire (its ``expire_days``). docs/operations/user-deletion.md.
"""
from __future__ import annotations

# (Airflow's DAG-file discovery reads only files that mention both "airflow" and "dag", as above.)
from _usersignals import spark_job, usersignals_dag

with usersignals_dag(
    dag_id="user_erasure",
    description="Delete erased users' rows from every lake table and audit each erasure",
    schedule="30 2 * * *",  # an hour before lake_maintenance, whose compaction rewrites the files
    tags=["maintenance", "privacy"],
    doc_md=__doc__,
    timeout_h=2,
) as dag:
    spark_job("erase_pending", ["delete-user", "--pending"])
