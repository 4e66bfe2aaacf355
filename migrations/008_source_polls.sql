-- What a daemon needs to poll a source cheaply: when its listing was last taken in full (a poll
-- in between lists only what is new), and the feed's HTTP validators for a conditional request.
CREATE TABLE source_polls (
    source         text PRIMARY KEY,
    full_listed_at timestamptz,
    etag           text,
    last_modified  text
);
