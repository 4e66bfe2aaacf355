"""What the stages and the run stand on: settings, logging, metrics, errors and retries, site
throttling, shutdown, the event loop, the database and model loading, GPU sampling, HTTP
endpoints. Imports neither stages nor orchestration."""
