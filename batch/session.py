"""The Spark session every batch job runs in: the Iceberg catalog mounted as the default."""
from __future__ import annotations

import os

from usersignals import lake
from usersignals.settings import Settings


def spark_session(settings: Settings, app_name: str, extra: dict[str, str] | None = None):
    """A session on ``settings.spark_master`` (local[2] by default) with the lake's catalog.

    Under spark-submit the submitter's ``--master``/``--conf`` win; in-process (tests, the
    local stack, ``dag.test()``) this starts a local JVM.
    """
    import sys

    from pyspark.sql import SparkSession

    # Executors' Python workers must be this environment's Python (redis, orjson, usersignals).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    lake.local_paths(settings)
    tmp = settings.data_dir / "spark-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(app_name)
    if "SPARK_ENV_LOADED" not in os.environ:  # not launched by spark-submit
        builder = builder.master(settings.spark_master)
    conf = {
        **lake.spark_conf(settings),
        "spark.local.dir": str(tmp),
        "spark.pyspark.python": os.environ["PYSPARK_PYTHON"],
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": "2g",
        "spark.sql.adaptive.enabled": "true",
        **(extra or {}),
    }
    for k, v in conf.items():
        builder = builder.config(k, v)
    # py4j logs every gateway connection close at INFO, also at interpreter exit after the
    # log handlers are gone ("I/O operation on closed file"): keep it to warnings.
    import logging

    logging.getLogger("py4j").setLevel(logging.WARNING)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
