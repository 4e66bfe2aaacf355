"""What the stages and the run stand on: settings, logging, metrics, retries, shutdown, the
event loop, the database and model loading, GPU sampling, HTTP endpoints. Imports neither sites,
stages nor orchestration."""
