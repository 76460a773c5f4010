-- The access policy (docs/protocol.md §5.15): the operator's document, as
-- checked and set by `cyphonic cloud policy set`. One row; its version
-- rises with every change, so every NMS reading this database notices it.
CREATE TABLE policy (
    id         INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version    INTEGER NOT NULL CHECK (version > 0),
    document   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
