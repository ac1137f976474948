"""Create and evolve the lake's tables to match ``iceberg_schemas.tables``; idempotent.

    python -m iceberg_schemas [--dry-run]

Missing tables are created; on existing ones, missing columns and partition fields are
added, the sort order and properties are brought in line. Nothing is dropped, renamed
or rewritten: existing data files stay as they are (partition spec evolution applies
to new writes). Reports what it changed.
"""
from __future__ import annotations

import logging

from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.transforms import IdentityTransform

from iceberg_schemas.tables import TableDef, partition_name, table_defs
from usersignals import lake
from usersignals.registry import Registry
from usersignals.settings import Settings

log = logging.getLogger("usersignals.iceberg_schemas")


def migrate(catalog, settings: Settings, registry: Registry, dry_run: bool = False) -> list[str]:
    """Bring every table to its definition; returns the changes made (or that would be made)."""
    changes: list[str] = []
    if (settings.lake_namespace,) not in catalog.list_namespaces():
        changes.append(f"create namespace {settings.lake_namespace}")
        if not dry_run:
            try:
                catalog.create_namespace(settings.lake_namespace)
            except NamespaceAlreadyExistsError:
                pass
    for tdef in table_defs(registry).values():
        changes += _apply(catalog, lake.table_id(settings, tdef.name), tdef, dry_run)
    for c in changes:
        log.info("%s%s", "(dry run) " if dry_run else "", c)
    return changes


def _apply(catalog, ident: str, tdef: TableDef, dry_run: bool) -> list[str]:
    schema = tdef.schema()
    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        if not dry_run:
            try:
                catalog.create_table(ident, schema=schema, partition_spec=tdef.partition_spec(schema),
                                     sort_order=tdef.sort_order(schema), properties=tdef.all_properties())
            except TableAlreadyExistsError:  # created concurrently: evolve it instead
                return _apply(catalog, ident, tdef, dry_run)
        return [f"create table {ident}"]

    changes = []
    have = {f.name for f in table.schema().fields}
    new_cols = [c for c in tdef.columns if c.name not in have]
    if new_cols:
        changes.append(f"{ident}: add columns {[c.name for c in new_cols]}")
        if not dry_run:
            with table.update_schema() as update:
                for c in new_cols:
                    # A new column is optional whatever the definition says: old rows have none.
                    update.add_column(c.name, c.type, doc=c.doc)
            table = catalog.load_table(ident)

    have_parts = {f.name for f in table.spec().fields}
    new_parts = [(c, t) for c, t in tdef.partition if partition_name(c, t) not in have_parts]
    if new_parts:
        changes.append(f"{ident}: add partition fields {[partition_name(c, t) for c, t in new_parts]}")
        if not dry_run:
            with table.update_spec() as update:
                for c, t in new_parts:
                    update.add_field(c, t, partition_name(c, t))
            table = catalog.load_table(ident)

    want_sort = [(table.schema().find_field(c).field_id, d) for c, d in tdef.sort]
    have_sort = [(f.source_id, f.direction.value) for f in table.sort_order().fields]
    if want_sort != have_sort:
        changes.append(f"{ident}: sort order {list(tdef.sort)}")
        if not dry_run:
            with table.update_sort_order() as update:
                for c, d in tdef.sort:
                    (update.asc if d == "asc" else update.desc)(c, IdentityTransform())

    props = {k: v for k, v in tdef.all_properties().items()
             if k != "format-version" and table.properties.get(k) != v}
    if props:
        changes.append(f"{ident}: set properties {sorted(props)}")
        if not dry_run:
            with table.transaction() as tx:
                tx.set_properties(**props)
    return changes

