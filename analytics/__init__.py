"""Analysts' SQL over the lake: saved Trino queries, an embedded engine, CLI and charts."""
