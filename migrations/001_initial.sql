-- Videos, their search chunks, and the embedding model the corpus was built with.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE videos (
    id              text PRIMARY KEY,
    url             text NOT NULL,
    title           text,
    channel         text,
    extractor       text,
    published_at    timestamptz,
    duration_s      double precision,
    status          text NOT NULL DEFAULT 'discovered'
                    CHECK (status IN ('discovered', 'processing', 'done', 'failed')),
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    asr_model       text,
    embedding_model text,
    chunk_count     integer,
    timings         jsonb,
    discovered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz
);
CREATE INDEX videos_status_idx ON videos (status);

-- The dimension is fixed when the first embedding model is recorded in `corpus`.
CREATE TABLE segments (
    video_id  text NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    seg_index integer NOT NULL CHECK (seg_index >= 0),
    start_s   double precision NOT NULL,
    end_s     double precision NOT NULL,
    speaker   text,
    text      text NOT NULL,
    embedding vector NOT NULL,
    PRIMARY KEY (video_id, seg_index)
);

CREATE TABLE corpus (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    embedding_model text NOT NULL,
    embedding_dim   integer NOT NULL CHECK (embedding_dim > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
