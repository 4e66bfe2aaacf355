from ingest.orchestration.cli import main

main()
