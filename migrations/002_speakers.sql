-- Enrolled voices, the speaker path each video took, and per-chunk speaker confidence.
CREATE TABLE speakers (
    name          text PRIMARY KEY CHECK (name <> ''),
    model         text NOT NULL,
    -- Sum of unit-norm window embeddings: re-enrolling adds to it, its direction is the profile.
    embedding_sum vector NOT NULL,
    windows       integer NOT NULL CHECK (windows > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE segments ADD COLUMN speaker_confidence real;
CREATE INDEX segments_speaker_idx ON segments (speaker);

ALTER TABLE videos
    ADD COLUMN speaker_path text CHECK (speaker_path IN ('fast', 'full', 'off')),
    ADD COLUMN speaker_similarity double precision,
    ADD COLUMN speaker_spread double precision,
    ADD COLUMN speaker_reason text;
