"""The run as a whole: the CLI, backfill and daemon, claiming and listing work, wiring the stages
into a pipeline, progress, doctor, search and serve. May import from every other layer."""
