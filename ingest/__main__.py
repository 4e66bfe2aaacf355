from ingest.faces.cli import main

main()
