"""The pipeline's stages, one module each (download, transcribe, embed, sink), with the messages
they pass (`messages`), the listing of sources they share (`sources`) and the ledger that records
each video's outcome. Imports infrastructure, never orchestration."""
