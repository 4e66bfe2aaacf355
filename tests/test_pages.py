"""The search and transcript pages, in process, over a real corpus with real MiniLM embeddings:
a form whose every field has a label, results with the query's words marked and links to the
second and to the transcript, text from the corpus escaped, filters that narrow, a transcript in
order with anchors and downloads, and error pages (400, 404, 503) rather than stack traces."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from starlette.testclient import TestClient

from db.embedded import start_embedded, stop_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.faces.http.app import create_app
from ingest.faces.http.pages import clock, marked
from ingest.faces.http.params import MAX_QUERY_CHARS
from ingest.infrastructure.config import load_settings
from tests.conftest import create_database, pg_folder
from tests.test_search import MODEL, Chunk, corpus_texts, fill
from workers.embedder import EmbedderOptions, TextEmbedder

HOSTILE_TEXT = "Pwned? <script>alert('pwned')</script> The <b>parser</b> & the scheduler agreed."
HOSTILE_TITLE = '<img src=x onerror="alert(1)"> Talk 5'
LOCAL_URL = "file:///talks/a%20b.wav"
ASR_FOLDER = "/srv/models/whisper-large-v3"


def page_corpus() -> list[Chunk]:
    """The search corpus (tests/test_search.py), with one chunk of v04 that tries to be markup."""
    chunks = corpus_texts()
    chunks[42] = replace(chunks[42], text=HOSTILE_TEXT)
    return chunks


async def prepare(database_url: str) -> None:
    """The corpus, plus: v05's title is markup, v07 is a local file transcribed from a subtitle
    file, v03 was transcribed by a model in a folder of the server, and v99 is only
    discovered."""
    chunks = page_corpus()
    vectors = TextEmbedder(EmbedderOptions(MODEL)).encode([c.text for c in chunks])
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await fill(conn, chunks, vectors)
            await conn.execute("UPDATE videos SET title = $1 WHERE id = 'v05'", HOSTILE_TITLE)
            await conn.execute(
                "UPDATE videos SET extractor = NULL, url = $1, asr_model = NULL,"
                " transcript_source = 'subtitle file (a b.en.vtt)' WHERE id = 'v07'",
                LOCAL_URL,
            )
            await conn.execute(
                "UPDATE videos SET asr_model = $1, transcript_source = $2 WHERE id = 'v03'",
                ASR_FOLDER, f"speech recognition ({ASR_FOLDER})",
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO videos (id, url, title, status) VALUES"
                " ('v99', 'https://www.youtube.com/watch?v=v99', 'Soon', 'discovered')"
            )
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def corpus_url(pg_uri: str) -> str:
    url = asyncio.run(create_database(pg_uri))
    asyncio.run(prepare(url))
    return url


@pytest.fixture(scope="module")
def client(corpus_url: str) -> Iterator[TestClient]:
    settings = load_settings(database_url=corpus_url, embedding_model=MODEL, device="cpu")
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        yield client


class Page(HTMLParser):
    """What the tests look at in a page: the form's fields and labels, the landmarks, and the
    elements' ids and links in order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.fields: list[str] = []
        self.labels: list[str] = []
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.lang: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "html":
            self.lang = a.get("lang")
        if tag in {"input", "select", "textarea"} and a.get("type") not in {"hidden", "submit"}:
            self.fields.append(a.get("id") or "")
        if tag == "label":
            self.labels.append(a.get("for") or "")
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))


def hrefs(html: str, css_class: str) -> list[str]:
    return re.findall(rf'class="{css_class}" href="([^"]*)"', html)


def channels(html: str) -> list[str]:
    return re.findall(r'<span class="channel">([^<]*)</span>', html)


def page(client: TestClient, path: str = "/", **params: Any) -> tuple[int, str]:
    answer = client.get(path, params=params)
    assert answer.headers["content-type"].startswith("text/html"), answer.text
    return answer.status_code, answer.text


def form(**params: str) -> dict[str, str]:
    """The parameters as the page's form sends them: every field, the empty ones too."""
    sent = {"q": "", "mode": "hybrid", "channel": "", "speaker": "", "after": "", "before": ""}
    return {**sent, "k": "10", **params}


def test_clock_and_marks() -> None:
    assert [clock(s) for s in (0, 59.9, 210.5, 3725)] == ["0:00", "0:59", "3:30", "1:02:05"]
    assert marked("a **b** <c>") == "a <mark>b</mark> &lt;c&gt;"
    assert marked("**<i>** & ...**x**") == "<mark>&lt;i&gt;</mark> &amp; ...<mark>x</mark>"
    assert marked("a **b** c**") == "a <mark>b</mark> c**"  # an unpaired ** is text


def test_an_empty_query_is_the_form_and_the_corpus(client: TestClient) -> None:
    status, html = page(client)
    assert status == 200
    found = Page(html)
    assert found.lang == "en" and 'name="viewport"' in html
    assert {"header", "main", "footer", "form", "label"} <= set(found.tags)
    assert 'role="search"' in html and 'action="/"' in html and 'method="get"' in html
    assert set(found.fields) == {
        "q", "mode", "channel", "speaker", "after", "before", "k", "one_per_video"
    }  # fmt: skip
    assert sorted(found.fields) == sorted(found.labels)  # each field, its own label
    assert "30 videos, 300 chunks" in html and "Last updated" in html
    assert "result" not in found.ids and 'class="result"' not in html
    assert client.get("/static/pages.css").headers["content-type"].startswith("text/css")


def test_the_address_carries_the_query_and_the_results_mark_its_words(
    client: TestClient,
) -> None:
    status, html = page(client, **form(q="CVE-2024-3094", k="3"))
    assert status == 200
    assert 'value="CVE-2024-3094"' in html  # the form repeats the search
    assert hrefs(html, "transcript-link")[0] == "/videos/v15#chunk-7"
    assert hrefs(html, "play-link")[0] == "https://youtu.be/v15?t=210"
    assert "<mark>CVE-2024-3094</mark>" in html
    first = html[html.index('class="result"') :]
    assert "Talk 15" in first and ">Host, Guest<" in first and "3:30\u20133:59" in first


def test_the_page_shows_what_the_api_answers(client: TestClient) -> None:
    params = {"q": "a memory leak in production", "k": "10"}
    api = client.get("/search", params=params).json()
    html = page(client, **form(**params))[1]
    expected = [f"/videos/{r['video_id']}#chunk-{r['seg_index']}" for r in api]
    assert hrefs(html, "transcript-link") == expected and len(expected) == 10
    assert '<a href="/search?q=a+memory+leak+in+production&amp;mode=hybrid&amp;k=10">' in html


def test_text_from_the_corpus_never_becomes_markup(client: TestClient) -> None:
    status, html = page(client, q="pwned scheduler", mode="text", k="3")
    assert status == 200
    assert hrefs(html, "transcript-link")[0] == "/videos/v04#chunk-2"
    # The snippet (PostgreSQL leaves tags out of it) marks the words and escapes the rest.
    assert "<mark>Pwned</mark>?" in html and "alert(&#39;pwned&#39;)" in html
    assert "<script>" not in html and "<mark>scheduler</mark> agreed" in html
    transcript = page(client, "/videos/v04")[1]
    assert "<script>" not in transcript and "<b>" not in transcript
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in transcript
    assert "&lt;b&gt;parser&lt;/b&gt; &amp; the" in transcript
    titled = page(client, q="a memory leak", k="50", one_per_video="true")[1]
    assert "<img" not in titled and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in titled


def test_filters_narrow_the_results(client: TestClient) -> None:
    everything = page(client, **form(q="a bug in the scheduler", k="20"))[1]
    assert set(channels(everything)) == {"even", "odd"}
    odd = page(client, **form(q="a bug in the scheduler", k="20", channel="odd"))[1]
    assert channels(odd) == ["odd"] * 20
    rare = page(client, **form(q="a memory leak", speaker="Rare", mode="vector"))[1]
    assert re.findall(r'<span class="speaker">([^<,]*)', rare) == ["Rare"] * 10
    dated = page(client, **form(q="a bug", k="50", after="2024-01-11", before="2024-01-13"))[1]
    assert {h.split("#")[0] for h in hrefs(dated, "transcript-link")} == {
        "/videos/v10", "/videos/v11"
    }  # fmt: skip
    assert 'value="2024-01-11"' in dated and 'value="odd"' in odd


def test_the_transcript_page_lists_every_chunk_in_order(client: TestClient) -> None:
    status, html = page(client, "/videos/v15")
    assert status == 200
    found = Page(html)
    assert [i for i in found.ids if i.startswith("chunk-")] == [f"chunk-{i}" for i in range(10)]
    times = hrefs(html, "time")
    assert times == [f"https://youtu.be/v15?t={i * 30}" for i in range(10)]
    assert ">3:30<" in html and ">Host, Guest<" in html and "CVE-2024-3094" in html
    downloads = [link for link in found.links if "/transcript." in link]
    assert downloads == [f"/videos/v15/transcript.{e}" for e in ("srt", "vtt", "txt", "json")]
    assert "/" in found.links and "speech recognition (asr)" in html
    assert "300 chunks" in html  # the corpus, at the bottom of every page


def test_the_server_s_own_paths_are_not_shown(client: TestClient) -> None:
    """As in the JSON API: a local file is shown by its title and times, not by its place on
    the server, and a model of a folder of the server by the folder's name."""
    html = page(client, "/videos/v07")[1]
    assert "subtitle file (a b.en.vtt)" in html and '<span class="time">1:30</span>' in html
    assert "file:" not in html and "/talks/" not in html and hrefs(html, "time") == []
    found = page(client, **form(q="a memory leak", k="100", mode="vector"))[1]
    assert "/videos/v07#" in found and "file:" not in found and "/talks/" not in found
    transcribed = page(client, "/videos/v03")[1]
    assert "speech recognition (whisper-large-v3)" in transcribed
    assert "/srv/models" not in transcribed


def test_a_video_without_a_transcript_yet_says_so(client: TestClient) -> None:
    status, html = page(client, "/videos/v99")
    assert status == 200 and "No transcript yet: this video is discovered." in html
    assert 'id="chunk-' not in html and "/transcript.srt" not in html


def test_an_unknown_video_is_a_404_page(client: TestClient) -> None:
    status, html = page(client, "/videos/<nope>")
    assert status == 404
    assert "no video &#39;&lt;nope&gt;&#39; here" in html
    assert 'href="/"' in html
    for odd in ("%00v15", "v" * 5000):
        assert page(client, f"/videos/{odd}")[0] == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": "0"}, "k must be a whole number from 1 to 100"),
        ({"mode": "fuzzy"}, "invalid mode &#39;fuzzy&#39;"),
        ({"after": "last tuesday"}, "after must be an ISO 8601 date"),
        ({"one_per_video": "maybe"}, "one_per_video must be true or false"),
        ({"limit": "3"}, "unknown parameter &#39;limit&#39;"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"q is longer than {MAX_QUERY_CHARS}"),
        ({"speaker": "<b>x</b>", "k": "1000"}, "not &#39;1000&#39;"),
        ({"q": "a\x00bug", "channel": "c" * 5000}, "q holds a NUL character"),
    ],
)
def test_bad_parameters_are_a_400_page_that_says_why(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    status, html = page(client, **{"q": "a bug", **params})
    assert status == 400, html
    assert message in html and 'role="alert"' in html
    assert 'id="q"' in html and 'class="result"' not in html  # the form, to correct it
    assert "<b>x</b>" not in html
    assert "\x00" not in html and "c" * 1001 not in html  # what the form shows back is bounded


def test_an_unreachable_database_is_a_503_page_until_it_is_back() -> None:
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    settings = load_settings(database_url=uri, embedding_model=MODEL, device="cpu")
    try:
        with TestClient(
            create_app(settings), base_url="http://localhost", raise_server_exceptions=False
        ) as client:
            assert page(client)[0] == 200
            stop_embedded(pgdata)
            for path in ("/", "/?q=a+bug", "/videos/v01"):
                down = client.get(path)
                assert down.status_code == 503, (path, down.text)
                assert down.headers["content-type"].startswith("text/html")
                assert "database unavailable; try again shortly" in down.text
                assert down.headers["retry-after"] == "1"
            assert start_embedded(pgdata) == uri
            assert page(client, "/videos/v01")[0] == 404
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)
