-- Enrollment credentials are one-time, and a device's sessions are ordered
-- and carry their replay floor (docs/protocol.md §3.3, §3.4, §4.3).

-- When the device's enrollment password enrolled it; NULL while it may
-- still enroll. `cyphonic cloud device reset` sets a new password and
-- clears this.
ALTER TABLE devices ADD COLUMN password_used_at INTEGER;

-- A password that already enrolled its device (a certificate issued since
-- the device was added) is spent.
UPDATE devices
   SET password_used_at = (SELECT MIN(c.issued_at) FROM certificates c
                            WHERE c.device_id = devices.device_id
                              AND c.issued_at >= devices.created_at)
 WHERE password_hash IS NOT NULL
   AND EXISTS (SELECT 1 FROM certificates c
                WHERE c.device_id = devices.device_id
                  AND c.issued_at >= devices.created_at);

-- The Login that opened a session: a later Login has a greater number,
-- across every device, so a device removed and added again never reuses
-- one.
ALTER TABLE sessions ADD COLUMN login_seq INTEGER NOT NULL DEFAULT 0;
-- Node -> NMS counters at or below this were accepted by an NMS (the
-- counter of the session's latest Registration, stored before it took
-- effect) and are refused from then on. The u64's bits in an INTEGER.
ALTER TABLE sessions ADD COLUMN replay_floor INTEGER NOT NULL DEFAULT 0;

CREATE TABLE login_sequence (
    id   INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last INTEGER NOT NULL CHECK (last >= 0)
) STRICT;

-- Number the sessions there are in the order they were opened.
UPDATE sessions
   SET login_seq = (SELECT COUNT(*) FROM sessions s2
                     WHERE s2.created_at < sessions.created_at
                        OR (s2.created_at = sessions.created_at
                            AND s2.session_id <= sessions.session_id));
INSERT INTO login_sequence (id, last) VALUES (1, (SELECT COUNT(*) FROM sessions));

-- Only each device's newest session stays: the older ones are the ones a
-- recorded Registration could be replayed under.
DELETE FROM sessions
 WHERE login_seq < (SELECT MAX(s2.login_seq) FROM sessions s2
                     WHERE s2.device_id = sessions.device_id);

CREATE INDEX sessions_by_device ON sessions (device_id, login_seq);
