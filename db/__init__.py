"""Storage: connection pool, migrations, the chunk sink and queries on PostgreSQL + pgvector.

Nothing here imports `ingest` or `workers`: callers hand in plain values.
"""
