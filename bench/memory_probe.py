"""`python -m bench.memory_probe SERVER_URI VIDEOS`: runs fast synthetic videos through the
pipeline in a fresh process and prints its peak resident memory, for the memory benchmark."""

from __future__ import annotations

import asyncio
import json
import resource
import sys

from bench.pipeline import FAST, run_synthetic

if __name__ == "__main__":
    asyncio.run(run_synthetic(sys.argv[1], FAST, int(sys.argv[2])))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
