-- General nodes: devices of kind 'general' that an adapter (a node) stands
-- for on its LAN. A general node is known there by its MAC; it goes with
-- its device, and an adapter that still serves general nodes cannot be
-- removed.
CREATE TABLE general_nodes (
    device_id  TEXT PRIMARY KEY NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    adapter_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE RESTRICT,
    mac        TEXT NOT NULL UNIQUE
) STRICT;

CREATE INDEX general_nodes_by_adapter ON general_nodes (adapter_id);
