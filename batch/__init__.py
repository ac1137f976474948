"""Offline jobs on Spark + Iceberg (see batch/README.md)."""
