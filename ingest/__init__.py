"""ingest: channels, playlists, feeds and folders of audio into a searchable transcript corpus."""

__version__ = "0.1.0"
