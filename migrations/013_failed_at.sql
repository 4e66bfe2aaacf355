-- When a video last failed. `--retry-failed` retries the videos that failed before the run
-- began; updated_at is no measure of that, as a listing that renames or re-dates a failed video
-- moves it too (and then the video would not be retried).
ALTER TABLE videos ADD COLUMN failed_at timestamptz;
UPDATE videos SET failed_at = updated_at WHERE status = 'failed';
