-- Leases let several replicas share one database: a video is worked on by whoever holds an
-- unexpired lease on it. Live and upcoming streams are kept, as `skipped`, with the reason.
ALTER TABLE videos
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN live_status text;

ALTER TABLE videos DROP CONSTRAINT videos_status_check;
ALTER TABLE videos ADD CONSTRAINT videos_status_check
    CHECK (status IN ('discovered', 'processing', 'done', 'failed', 'skipped'));

CREATE INDEX videos_lease_idx ON videos (lease_owner) WHERE status = 'processing';
