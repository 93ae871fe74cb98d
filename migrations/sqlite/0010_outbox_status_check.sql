-- The outbox's status check, written as comparisons joined by OR instead of `IN` a list of
-- four: SQLite evaluates an `IN` list of more than two constants through a temporary b-tree it
-- builds for every row written (it was about a twentieth of the CPU time of queueing a
-- message). Same rule, same table; SQLite cannot change a check in place, so the table is
-- rebuilt (the documented twelve-step way, within this migration's transaction).
CREATE TABLE outbox_rebuilt (
    message_id      TEXT    PRIMARY KEY,
    recipient       TEXT    NOT NULL,
    message_type    TEXT    NOT NULL,
    consent_id      TEXT    NOT NULL,
    -- Lower goes first: withdrawal notices (0) go ahead of queued data (1) (DESIGN §3).
    priority        INTEGER NOT NULL,
    -- The audit entry that accepted the message; gives the order of acceptance.
    audit_idx       INTEGER NOT NULL,
    envelope        BLOB    NOT NULL,
    status          TEXT    NOT NULL CHECK (status = 'queued' OR status = 'delivered'
                                            OR status = 'refused' OR status = 'cancelled'),
    status_reason   TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    -- A lease: a worker (on any replica) that claimed the row until then.
    claimed_until   TEXT,
    -- The receiver's verified receipt (JSON), or its refusal (problem JSON).
    receipt         TEXT,
    problem         TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
INSERT INTO outbox_rebuilt (message_id, recipient, message_type, consent_id, priority, audit_idx,
    envelope, status, status_reason, attempts, next_attempt_at, claimed_until, receipt, problem,
    created_at, updated_at)
SELECT message_id, recipient, message_type, consent_id, priority, audit_idx, envelope, status,
    status_reason, attempts, next_attempt_at, claimed_until, receipt, problem, created_at,
    updated_at
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_rebuilt RENAME TO outbox;
CREATE INDEX outbox_by_consent ON outbox (consent_id);
CREATE INDEX outbox_due_by_peer ON outbox (recipient, status, priority, audit_idx);
CREATE INDEX outbox_queued_notices ON outbox (recipient, audit_idx)
    WHERE status = 'queued' AND message_type IN ('consent.granted', 'consent.withdrawn');
