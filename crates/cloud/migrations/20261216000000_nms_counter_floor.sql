-- The NMS's signaling counters (docs/protocol.md §4.2): each NMS run
-- reserves [base, base + range) with base = max(wall clock µs, floor) and
-- stores floor = base + range before it seals anything, so no two runs
-- share a counter under a key, even when the clock was set back. The u64's
-- bits in an INTEGER.
CREATE TABLE nms_counter_floor (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    floor INTEGER NOT NULL
) STRICT;
INSERT INTO nms_counter_floor (id, floor) VALUES (1, 0);
