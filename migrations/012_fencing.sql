-- Leases as a job queue keeps them.
--
-- Every claim draws a new fencing token from `lease_tokens` and stores it on the video; every
-- write of the claim (its outcome, its chunks, a renewal) requires it, so a stale job's writes
-- are dropped even when its process claimed the same video again since. The token stays on the
-- row after the claim ends, so that a write retried after its reply was lost recognises its own
-- first attempt, and a claim retried so finds the video it took.
CREATE SEQUENCE lease_tokens;
ALTER TABLE videos ADD COLUMN lease_token bigint;
CREATE UNIQUE INDEX videos_lease_token_idx ON videos (lease_token);

-- One heartbeat per process, on the database's clock: an owner whose heartbeat is older than
-- its lease is dead wherever it ran (a container's PID and host name prove nothing).
CREATE TABLE workers (
    owner      text PRIMARY KEY,
    host       text NOT NULL,
    pid        integer NOT NULL,
    lease_s    float8 NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- Videos needing cookies or another location, for the sweep that offers them to a process
-- whose identity differs.
CREATE INDEX videos_set_aside_idx ON videos (failed_identity)
    WHERE status = 'failed' AND failure_class IN ('needs_cookies', 'needs_location');

-- Listing rows whose video may be claimed now, so that a claim is one probe of a partial index
-- however much of the listing is done, waiting or held: a video to do, or one whose scheduled
-- retry was due when it last changed. A sweep marks retries that fell due since, and videos
-- set aside for an identity that another process does not have.
CREATE FUNCTION video_ready(status text, retry_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN status = 'discovered' OR (status = 'failed' AND coalesce(retry_at <= now(), false));

ALTER TABLE listings ADD COLUMN ready boolean NOT NULL DEFAULT false;
UPDATE listings l SET ready = true FROM videos v
    WHERE v.id = l.video_id AND video_ready(v.status, v.retry_at);
CREATE INDEX listings_ready_idx ON listings (source, position) WHERE ready;

-- Every change of a video's state updates its listing rows. The shared lock on each source waits
-- for a listing of that source being rewritten (which holds the lock exclusively), so that the
-- rewritten rows are computed from the video's state after this change, never before it.
-- Only the rows of the sources locked are updated: a row another listing adds meanwhile was
-- computed by that listing, and holding it without its source's lock could deadlock.
CREATE FUNCTION videos_ready_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sources text[];
BEGIN
    SELECT array_agg(DISTINCT source) INTO sources FROM listings WHERE video_id = NEW.id;
    PERFORM pg_advisory_xact_lock_shared(hashtext(s)) FROM unnest(sources) AS s;
    UPDATE listings SET ready = video_ready(NEW.status, NEW.retry_at)
        WHERE video_id = NEW.id AND source = ANY(sources)
          AND ready IS DISTINCT FROM video_ready(NEW.status, NEW.retry_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER videos_ready_changed AFTER UPDATE OF status, retry_at ON videos
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.retry_at IS DISTINCT FROM NEW.retry_at)
    EXECUTE FUNCTION videos_ready_changed();

-- Each claim and each end of a video rewrites its listing rows; a walk that starts over passes
-- the dead index entries until they are vacuumed, so vacuum them early.
ALTER TABLE listings SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
