-- Sites a process has paused (throttled, or waiting for the user to configure something), so
-- that `ingest status` shows them for every replica. Each process removes its rows as the site
-- resumes and when it ends.
CREATE TABLE site_pauses (
    site       text NOT NULL,
    owner      text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('throttled', 'needs_user')),
    reason     text NOT NULL,
    fix        text,
    resume_at  timestamptz,
    pauses     integer NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, owner)
);
