-- Devices the cloud knows: nodes (which log in themselves) and, later,
-- general devices that an adapter holds. A device's VIPs never change.
CREATE TABLE devices (
    device_id     TEXT    PRIMARY KEY NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('node', 'general')),
    -- argon2 PHC string; NULL for a device that cannot log in by password.
    password_hash TEXT,
    fqdn          TEXT    NOT NULL UNIQUE,
    vip4          TEXT    NOT NULL UNIQUE,
    vip6          TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
) STRICT;

-- Every certificate the intermediate CA issued to a device. Rows outlive
-- their device (revoked when it is removed), so no foreign key.
CREATE TABLE certificates (
    serial     INTEGER PRIMARY KEY NOT NULL CHECK (serial > 0),
    device_id  TEXT    NOT NULL,
    fqdn       TEXT    NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'good' CHECK (status IN ('good', 'revoked')),
    cert_pem   TEXT    NOT NULL
) STRICT;

CREATE INDEX certificates_by_device ON certificates (device_id);

-- Login sessions: the common key a node and the NMS sign signaling with.
-- A session ends with its device and with its certificate.
CREATE TABLE sessions (
    session_id  INTEGER PRIMARY KEY NOT NULL,
    device_id   TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    common_key  BLOB    NOT NULL CHECK (length(common_key) = 32),
    cert_serial INTEGER NOT NULL REFERENCES certificates (serial) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_certificate ON sessions (cert_serial);
