-- The operator's console: its administrators (argon2id password hashes),
-- their login sessions (a hash of the cookie's token, never the token),
-- and when each device last registered at an NMS.
CREATE TABLE console_admins (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE console_sessions (
    token_hash BLOB PRIMARY KEY,
    admin      TEXT NOT NULL REFERENCES console_admins (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

ALTER TABLE devices ADD COLUMN last_seen INTEGER;
