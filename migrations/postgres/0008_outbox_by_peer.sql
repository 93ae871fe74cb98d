-- Delivery claims each peer's due rows on its own (`storage::claim_due`): with the queue indexed
-- by recipient first, a long backlog for one peer (one that is down, say) is never scanned
-- while another peer's rows are claimed. It replaces the index on (status, priority, audit_idx).
DROP INDEX outbox_due;
CREATE INDEX outbox_due_by_peer ON outbox (recipient, status, priority, audit_idx);
-- A peer's first queued consent notice: data accepted after it waits until it has been
-- delivered (`ClaimScope::DataBeforeNotices`). Only queued notices are in it, so it stays small.
CREATE INDEX outbox_queued_notices ON outbox (recipient, audit_idx)
    WHERE status = 'queued' AND message_type IN ('consent.granted', 'consent.withdrawn');
