-- Messages this node accepted for delivery. The backlog lives here, not in memory: the delivery
-- worker claims a few due rows at a time.
CREATE TABLE outbox (
    message_id      TEXT    PRIMARY KEY,
    recipient       TEXT    NOT NULL,
    message_type    TEXT    NOT NULL,
    consent_id      TEXT    NOT NULL,
    -- Lower goes first: withdrawal notices (0) go ahead of queued data (1) (DESIGN §3).
    priority        INTEGER NOT NULL,
    -- The audit entry that accepted the message; gives the order of acceptance.
    audit_idx       INTEGER NOT NULL,
    envelope        BLOB    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('queued', 'delivered', 'refused', 'cancelled')),
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
CREATE INDEX outbox_due ON outbox (status, priority, audit_idx);
CREATE INDEX outbox_by_consent ON outbox (consent_id);

-- When a received message must be deleted at the latest (the consent's retention at the
-- recipient).
ALTER TABLE inbox ADD COLUMN delete_after TEXT;
CREATE INDEX inbox_by_delete_after ON inbox (delete_after);
