-- Failures that may heal are tried again on a schedule that grows. `failure_class` says what a
-- failed video's failure was (permanent, transient, decode, extractor_broken, needs_user, and
-- per video: needs_cookies, needs_location); `retry_at` when it is tried next (NULL: never, or
-- only when the identity the site sees changes: `failed_identity` is the cookies and proxy
-- settings' fingerprint when a video needed them).
ALTER TABLE videos
    ADD COLUMN failure_class text,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN failed_identity text;

-- Failures recorded before this schema are left as they were: never tried again unless asked.
UPDATE videos SET failure_class = 'permanent' WHERE status = 'failed';

CREATE INDEX videos_retry_idx ON videos (retry_at) WHERE status = 'failed';

ALTER TABLE site_pauses DROP CONSTRAINT site_pauses_kind_check;
ALTER TABLE site_pauses ADD CONSTRAINT site_pauses_kind_check
    CHECK (kind IN ('throttled', 'needs_user', 'extractor_broken'));
