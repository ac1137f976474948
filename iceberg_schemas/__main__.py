"""``python -m iceberg_schemas [--dry-run]``: create or evolve the lake's tables."""
from __future__ import annotations

import argparse
import logging
import sys

from iceberg_schemas.migrate import migrate
from usersignals import lake
from usersignals.registry import load_registry
from usersignals.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create or evolve the lake's Iceberg tables.")
    parser.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    changes = migrate(lake.load_catalog(settings), settings, load_registry(settings.registry_path), args.dry_run)
    print(f"{len(changes)} change(s)" + (" (dry run)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
