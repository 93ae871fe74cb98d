-- The highest federation manifest this node has accepted. One row; a lower serial, or the same
-- serial with different content, is refused even after a restart.
CREATE TABLE manifest_state (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    serial        BIGINT   NOT NULL CHECK (serial > 0),
    content_hash  BYTEA    NOT NULL CHECK (length(content_hash) = 32),
    accepted_at   TIMESTAMPTZ NOT NULL
);
