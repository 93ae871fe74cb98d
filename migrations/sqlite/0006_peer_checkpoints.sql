-- The latest checkpoint of each peer's audit log that this node verified (from a receipt, or
-- from the peer's answer to GET /fed/v1/checkpoint with a consistency proof from the one stored
-- before), and the alarm raised when a peer's log fails to extend it: the reason code and the
-- peer's conflicting signed checkpoint, kept as evidence beside the stored one.
CREATE TABLE peer_checkpoints (
    peer          TEXT    PRIMARY KEY,
    size          INTEGER NOT NULL CHECK (size >= 0),
    root          BLOB    NOT NULL CHECK (length(root) = 32),
    note          TEXT    NOT NULL,
    seen_at       TEXT    NOT NULL,
    alarm_reason  TEXT,
    alarm_note    TEXT,
    alarm_at      TEXT
);
