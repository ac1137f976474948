"""tests/dags runs in Airflow's environment (.venv-airflow): tests/integration/test_dags.py
starts it there. Elsewhere (the main environment has no Airflow) it is not collected."""
import importlib.util

collect_ignore = [] if importlib.util.find_spec("airflow") else ["dags"]
