-- Re-embedding the corpus with another model while search goes on with the old vectors.
--
-- A run records its target here and adds `segments.next_embedding` typed with the target's
-- dimension; it fills that column batch by batch, then swaps it for `embedding` in one
-- transaction and clears this row. At most one re-embedding is under way.
CREATE TABLE reembedding (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    embedding_model text NOT NULL,
    embedding_dim   integer NOT NULL CHECK (embedding_dim > 0),
    started_at      timestamptz NOT NULL DEFAULT now()
);

-- The model a re-embedding replaced: a process still configured with it follows the corpus to
-- the new one instead of failing.
ALTER TABLE corpus ADD COLUMN previous_model text;

-- While a re-embedding is under way, a chunk whose text a writer changes loses its next vector,
-- which was made from the old text; the run embeds it again. (The trigger exists only while
-- `next_embedding` does.)
CREATE FUNCTION segments_next_embedding_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.next_embedding := NULL;
    RETURN NEW;
END
$$;
