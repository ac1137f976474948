"""Runtime settings, read once from the environment (prefix ``USERSIGNALS_``).

Every part of the platform (streaming job, serving API, local stack, benchmarks)
takes its addresses and limits from here, so one variable moves them all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(f"USERSIGNALS_{name}", default)


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"USERSIGNALS_{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Settings:
    broker_port: int = 9092
    kv_port: int = 6379
    api_port: int = 8000
    job_metrics_port: int = 9250
    host: str = "127.0.0.1"
    data_dir: Path = REPO_ROOT / "var"
    registry_path: Path | None = None
    events_topic: str = "user_events"
    dlq_topic: str = "user_events_dlq"
    served_topic: str = "served_features"
    topic_partitions: int = 4
    consumer_group: str = "usersignals-indexer"
    kv_prefix: str = "us"
    # Flink job tuning; the defaults favour latency (see README "Tuning").
    parallelism: int = 2
    checkpoint_interval_ms: int = 5000
    bundle_size: int = 1000
    bundle_time_ms: int = 20
    python_worker_mode: str = "process"
    extra: dict = field(default_factory=dict)

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def kv_url(self) -> str:
        return f"redis://{self.host}:{self.kv_port}/0"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def with_overrides(self, **kwargs) -> "Settings":
        return replace(self, **kwargs)


def load_settings() -> Settings:
    """Settings from ``USERSIGNALS_*`` environment variables, defaulting to the local stack."""
    registry = _env("REGISTRY", "")
    mode = _env("PYTHON_WORKER_MODE", "process")
    if mode not in ("process", "loopback"):
        raise ValueError(f"USERSIGNALS_PYTHON_WORKER_MODE={mode!r}: expected 'process' or 'loopback'")
    return Settings(
        broker_port=_env_int("BROKER_PORT", 9092),
        kv_port=_env_int("KV_PORT", 6379),
        api_port=_env_int("API_PORT", 8000),
        job_metrics_port=_env_int("JOB_METRICS_PORT", 9250),
        host=_env("HOST", "127.0.0.1"),
        data_dir=Path(_env("DATA_DIR", str(REPO_ROOT / "var"))).resolve(),
        registry_path=Path(registry).resolve() if registry else None,
        events_topic=_env("EVENTS_TOPIC", "user_events"),
        dlq_topic=_env("DLQ_TOPIC", "user_events_dlq"),
        served_topic=_env("SERVED_TOPIC", "served_features"),
        topic_partitions=_env_int("TOPIC_PARTITIONS", 4),
        consumer_group=_env("CONSUMER_GROUP", "usersignals-indexer"),
        kv_prefix=_env("KV_PREFIX", "us"),
        parallelism=_env_int("PARALLELISM", 2),
        checkpoint_interval_ms=_env_int("CHECKPOINT_INTERVAL_MS", 5000),
        bundle_size=_env_int("BUNDLE_SIZE", 1000),
        bundle_time_ms=_env_int("BUNDLE_TIME_MS", 20),
        python_worker_mode=mode,
    )
