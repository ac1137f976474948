"""Stage 4, size: cut each sequence to the tenant's length (padding happens in featurize)."""
from __future__ import annotations

from usersignals.registry import Tenant

from serving.model import UserSequences


def apply(users: list[UserSequences], tenant: Tenant) -> None:
    for u in users:
        u.sequences = {ds: evs[:tenant.sequences[ds]] for ds, evs in u.sequences.items()}
