-- The audit log: entries as leaves of an RFC 6962 Merkle tree. Entry bytes are stored exactly as
-- they were hashed and never re-serialised.
CREATE TABLE audit_entries (
    idx        INTEGER PRIMARY KEY CHECK (idx >= 0),
    entry      BLOB    NOT NULL,
    leaf_hash  BLOB    NOT NULL CHECK (length(leaf_hash) = 32)
);

-- The tree's right edge (perfect-subtree roots, largest first), so that appending resumes
-- without reading the entries.
CREATE TABLE audit_tree (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    size      INTEGER NOT NULL CHECK (size >= 0),
    frontier  BLOB    NOT NULL,
    root      BLOB    NOT NULL CHECK (length(root) = 32),
    -- The latest signed checkpoint, committed with the entries it covers.
    checkpoint TEXT   NOT NULL
);

-- Earlier signed checkpoints (C2SP tlog-checkpoint as signed notes), kept at most about once a
-- second so that verification stays fast under light traffic; the latest is in audit_tree.
CREATE TABLE audit_checkpoints (
    size  INTEGER PRIMARY KEY CHECK (size > 0),
    note  TEXT    NOT NULL
);
