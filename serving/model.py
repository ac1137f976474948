"""What flows between the serving stages: one user's sequences and aggregate state."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UserSequences:
    user_id: str
    # dataset -> events, newest first; each event is the stored JSON object, decoded
    sequences: dict[str, list[dict]]
    # category -> decayed engagement count at request time (empty if the tenant has no views)
    state: dict[str, float] = field(default_factory=dict)
    views: dict = field(default_factory=dict)
