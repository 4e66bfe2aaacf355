-- Each source's listing, stored once with its order, so that choosing the next video to do is
-- an indexed walk along (source, position) rather than a sort of the whole listing per claim.
CREATE TABLE listings (
    source   text NOT NULL,
    position integer NOT NULL,
    video_id text NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    PRIMARY KEY (source, position)
);
CREATE INDEX listings_video_idx ON listings (video_id);
