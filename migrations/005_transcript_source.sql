-- Where a video's transcript came from: speech recognition (which model), the creator's
-- captions, automatic captions, or a subtitle file beside a local audio file.
ALTER TABLE videos ADD COLUMN transcript_source text;
