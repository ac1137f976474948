"""What flows between the serving stages: one user's sequences and aggregate state."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UserSequences:
    user_id: str
    # dataset -> events, newest first: decoded events (dicts), or the KV layer's JSON array (bytes)
    # when no stage looks inside them; for model-ready formats, the filter stage turns those bytes
    # into ``serving.columns.Columns``
    sequences: dict[str, object]
    # category -> decayed engagement count at request time (empty if the tenant has no views)
    state: dict[str, float] = field(default_factory=dict)
    views: dict = field(default_factory=dict)
