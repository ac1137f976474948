"""Iceberg table definitions (``tables``) and their idempotent migration (``migrate``)."""
