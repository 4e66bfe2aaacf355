"""Model code: audio decoding, speech recognition, chunking, text embeddings.

Nothing here imports `ingest` or `db`: callers hand in what a step needs.
"""
