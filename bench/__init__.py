"""Benchmarks of the ingestion service: `python -m bench [NAME...] [--check] [--quick]`.

Every figure is a ratio or rate measured side by side in one run, with its target.
"""
