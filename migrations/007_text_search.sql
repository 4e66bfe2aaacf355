-- Full-text search beside the vectors, for hybrid search: exact words (names, identifiers) that
-- an embedding blurs are found by their lexemes.
--
-- A generated column's expression must be immutable, so it cannot read a setting. Each chunk
-- therefore carries the text search configuration it was indexed with (`text_config`), whose
-- default is the corpus's language; the tsvector is generated from the two columns, so it is
-- always in step with the chunk's text. Changing INGEST_SEARCH_LANGUAGE changes the default and
-- the configuration of every chunk in one transaction (see db/search.py), so the stored lexemes
-- and the queries always use the same configuration.
CREATE TABLE text_search (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    language  regconfig NOT NULL
);
INSERT INTO text_search (language) VALUES ('english');

ALTER TABLE segments
    ADD COLUMN text_config regconfig NOT NULL DEFAULT 'english',
    ADD COLUMN text_search tsvector GENERATED ALWAYS AS (to_tsvector(text_config, text)) STORED;

CREATE INDEX segments_text_search_idx ON segments USING gin (text_search);
CREATE INDEX videos_channel_idx ON videos (channel);
CREATE INDEX videos_published_idx ON videos (published_at);
