-- Exact full-text ranking without scoring every match. A chunk's relevance to a query is how
-- often the query's words occur in it, each word counted at most 32 times. For every lexeme
-- of a chunk, this index holds the tokens '1:lexeme' .. 'n:lexeme', n its count (up to 32),
-- so "the chunks where `know` occurs at least 7 times" is one GIN lookup, and the chunks whose
-- relevance is at least S are a union of such lookups (db/text_ranking.py). Words that most
-- chunks contain, whose matches are too many to score one by one, are then ranked by reading
-- only the few chunks that can reach the top.
--
-- The counting expression is the same here and in db/text_ranking.py: a lexeme without
-- positions counts once.
CREATE FUNCTION word_counts(words tsvector) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT array_to_tsvector(coalesce(array_agg(n || ':' || w.lexeme), '{}'))
    FROM unnest(words) AS w,
         generate_series(1, least(greatest(cardinality(w.positions), 1), 32)) AS n
$$;

-- Built once over the existing chunks, while the migration holds its lock. New entries wait
-- in a GIN index's pending list, which every lookup reads through, until the list outgrows its
-- limit (4 MB by default): with chunks written all day, a ranking's few dozen lookups would each
-- read megabytes. A small list is merged into the index more often, which costs the writes
-- less than it saves the searches (bench/search.py measures both).
CREATE INDEX segments_word_counts_idx ON segments USING gin (word_counts(text_search))
    WITH (gin_pending_list_limit = 256);
ALTER INDEX segments_text_search_idx SET (gin_pending_list_limit = 256);
