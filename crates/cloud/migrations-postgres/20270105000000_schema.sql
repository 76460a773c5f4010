-- The cloud's schema on PostgreSQL: the SQLite migrations in
-- ../migrations up to 20270105000000_console.sql, applied in one step,
-- column for column (BIGINT for INTEGER, BYTEA for BLOB, the same checks,
-- keys and references). A later change gets a migration in both folders.
--
-- The u64s (session IDs, signaling counters) are their bits in a signed
-- BIGINT, as in SQLite's INTEGER. Text keys sort bytewise (COLLATE "C"),
-- as SQLite's do, whatever the database's locale.

-- Devices the cloud knows: nodes (which log in themselves) and general
-- devices that an adapter holds. A device's VIPs never change.
CREATE TABLE devices (
    device_id        TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    kind             TEXT   NOT NULL CHECK (kind IN ('node', 'general')),
    -- argon2 PHC string; NULL for a device that cannot log in by password.
    password_hash    TEXT,
    fqdn             TEXT   NOT NULL UNIQUE,
    vip4             TEXT   NOT NULL UNIQUE,
    vip6             TEXT   NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    disabled         BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    -- When the enrollment password enrolled the device; NULL while it may
    -- still enroll.
    password_used_at BIGINT,
    -- When the device last registered at an NMS.
    last_seen        BIGINT
);

-- Every certificate the intermediate CA issued to a device. Rows outlive
-- their device (revoked when it is removed), so no foreign key.
CREATE TABLE certificates (
    serial      BIGINT PRIMARY KEY NOT NULL CHECK (serial > 0),
    device_id   TEXT COLLATE "C" NOT NULL,
    fqdn        TEXT   NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL,
    status      TEXT   NOT NULL DEFAULT 'good' CHECK (status IN ('good', 'revoked')),
    cert_pem    TEXT   NOT NULL,
    -- The order certificates were issued in (issued_at has a resolution of
    -- a second, serials are random).
    issue_order BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX certificates_by_device ON certificates (device_id);

-- Login sessions: the common key a node and the NMS sign signaling with.
-- A session ends with its device and with its certificate.
CREATE TABLE sessions (
    session_id   BIGINT PRIMARY KEY NOT NULL,
    device_id    TEXT COLLATE "C" NOT NULL
                 REFERENCES devices (device_id) ON DELETE CASCADE,
    common_key   BYTEA  NOT NULL CHECK (length(common_key) = 32),
    cert_serial  BIGINT NOT NULL REFERENCES certificates (serial) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    -- The Login that opened the session: a later Login has a greater
    -- number, across every device.
    login_seq    BIGINT NOT NULL DEFAULT 0,
    -- Node -> NMS counters at or below this were accepted by an NMS.
    replay_floor BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_certificate ON sessions (cert_serial);
CREATE INDEX sessions_by_device ON sessions (device_id, login_seq);

-- General nodes: devices of kind 'general' that an adapter (a node) stands
-- for on its LAN, known there by MAC.
CREATE TABLE general_nodes (
    device_id  TEXT COLLATE "C" PRIMARY KEY NOT NULL
               REFERENCES devices (device_id) ON DELETE CASCADE,
    adapter_id TEXT COLLATE "C" NOT NULL
               REFERENCES devices (device_id) ON DELETE RESTRICT,
    mac        TEXT NOT NULL UNIQUE
);

CREATE INDEX general_nodes_by_adapter ON general_nodes (adapter_id);

-- The number of the latest Login.
CREATE TABLE login_sequence (
    id   BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    last BIGINT NOT NULL CHECK (last >= 0)
);
INSERT INTO login_sequence (id, last) VALUES (1, 0);

-- The NMS's signaling counters (docs/protocol.md §4.2): each NMS run
-- reserves [base, base + range) and stores floor = base + range first.
CREATE TABLE nms_counter_floor (
    id    BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    floor BIGINT NOT NULL
);
INSERT INTO nms_counter_floor (id, floor) VALUES (1, 0);

-- The access policy (docs/protocol.md §5.15); its version rises with
-- every change.
CREATE TABLE policy (
    id         BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    version    BIGINT NOT NULL CHECK (version > 0),
    document   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The operator's console: administrators (argon2id password hashes) and
-- their login sessions (a hash of the cookie's token, never the token).
CREATE TABLE console_admins (
    name          TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE console_sessions (
    token_hash BYTEA PRIMARY KEY,
    admin      TEXT COLLATE "C" NOT NULL
               REFERENCES console_admins (name) ON DELETE CASCADE,
    csrf       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
