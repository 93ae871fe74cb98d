-- Consents as this node holds them: pairwise, with the terms exactly as exchanged in the
-- consent.granted body, and an event log from which the status is derived.
CREATE TABLE consents (
    consent_id          TEXT    PRIMARY KEY,
    subject_ref         TEXT    NOT NULL,
    recording_org       TEXT    NOT NULL,
    counterpart         TEXT    NOT NULL,
    -- The purposes as `id@version`, space-separated (the policy's view of the terms).
    purposes            TEXT    NOT NULL,
    -- The consent.granted body (JSON), as the record of what the family agreed to.
    terms               TEXT    NOT NULL,
    valid_from          TEXT    NOT NULL,
    valid_until         TEXT    NOT NULL,
    -- How long the recipient may keep what it received under the consent.
    retention_days      INTEGER NOT NULL CHECK (retention_days > 0),
    -- This node's own key for the child. Never leaves the node; NULL until bound.
    local_subject_key   TEXT,
    bound_at            TEXT,
    -- The one-time binding code, only as a slow salted hash.
    binding_code_hash   TEXT    NOT NULL,
    binding_failures    INTEGER NOT NULL DEFAULT 0 CHECK (binding_failures >= 0),
    binding_failures_total INTEGER NOT NULL DEFAULT 0 CHECK (binding_failures_total >= 0),
    binding_locked_until TEXT,
    created_at          TEXT    NOT NULL
);

CREATE TABLE consent_events (
    consent_id   TEXT    NOT NULL REFERENCES consents (consent_id),
    seq          INTEGER NOT NULL CHECK (seq >= 0),
    event        TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    recorded_by  TEXT    NOT NULL,
    audit_idx    INTEGER NOT NULL,
    PRIMARY KEY (consent_id, seq)
);

-- Every message id a sender used past the identity check, with the hash of the exact bytes and
-- the first answer: a replay gets that answer again, a different body under the same id is
-- refused (message-id-conflict).
CREATE TABLE seen_messages (
    sender        TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    envelope_sha256 TEXT  NOT NULL,
    status        INTEGER NOT NULL,
    -- The problem document of a refusal; NULL for an admitted message.
    problem       TEXT,
    -- The receipt of an admitted message (JSON), stored right after its commit; if the node
    -- stopped in between, the first replay rebuilds and stores it.
    receipt       TEXT,
    audit_idx     INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id)
);

-- Admitted messages about a child, stored in the same transaction as the audit entry that
-- admitted them.
CREATE TABLE inbox (
    sender        TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    message_type  TEXT    NOT NULL,
    purpose       TEXT    NOT NULL,
    consent_id    TEXT    NOT NULL,
    subject_ref   TEXT    NOT NULL,
    envelope      BLOB    NOT NULL,
    received_at   TEXT    NOT NULL,
    audit_idx     INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX inbox_by_consent ON inbox (consent_id);
