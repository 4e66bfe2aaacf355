"""`ingest serve`: the HTTP server over the corpus."""
