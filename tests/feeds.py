"""An in-test channel: files and an RSS 2.0 feed served over HTTP on 127.0.0.1."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class Item:
    guid: str
    title: str
    file: str  # path under the served folder (need not exist: a 404), or a whole URL


# Decides a request's answer instead of the file: (status, headers), or None to serve the file;
# status 0 hangs up without an answer, as a server dropping connections does.
Gate = Callable[[str], tuple[int, dict[str, str]] | None]


class _QuietHandler(SimpleHTTPRequestHandler):
    bytes_per_second: int | None = None
    gate: Gate | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        gate = type(self).gate
        answer = gate(self.path) if gate is not None else None
        if answer is None:
            return super().send_head()
        status, headers = answer
        if status == 0:
            self.close_connection = True
            return None
        self.send_response(status)
        for name, value in {"Content-Length": "0", **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        return None

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self.bytes_per_second is None:
            super().copyfile(source, outputfile)
            return
        step = max(1, self.bytes_per_second // 10)
        while block := source.read(step):
            outputfile.write(block)
            time.sleep(0.1)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-transfer are part of the tests


@contextmanager
def serve(
    folder: Path, bytes_per_second: int | None = None, gate: Gate | None = None
) -> Iterator[str]:
    """Serves `folder`, optionally slowly, or answering as `gate` says; yields its base URL."""
    attributes = {
        "bytes_per_second": bytes_per_second,
        "gate": staticmethod(gate) if gate else None,
    }
    handler_class = type("Handler", (_QuietHandler,), attributes)
    handler = functools.partial(handler_class, directory=str(folder))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fill(folder: Path, sources: Sequence[Path], count: int) -> list[Item]:
    """`count` videos `0.wav`, `1.wav`, ... in `folder`, copies of `sources` in turn."""
    items = []
    for i in range(count):
        shutil.copy(sources[i % len(sources)], folder / f"{i}.wav")
        items.append(Item(f"v{i}", f"Video {i}", f"{i}.wav"))
    return items


def write_feed(folder: Path, base_url: str, items: Sequence[Item], name: str = "feed.xml") -> str:
    """Writes an RSS feed of audio enclosures into the served folder; returns its URL."""

    def url(item: Item) -> str:
        return item.file if "://" in item.file else f"{base_url}/{item.file}"

    entries = "".join(
        f"<item><title>{escape(i.title)}</title><guid>{escape(i.guid)}</guid>"
        f'<enclosure url="{escape(url(i))}" type="audio/wav" length="1"/>'
        "</item>"
        for i in items
    )
    (folder / name).write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Test channel</title>'
        f"<link>{base_url}/</link><description>test</description>{entries}</channel></rss>"
    )
    return f"{base_url}/{name}"
