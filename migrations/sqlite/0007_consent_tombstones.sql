-- Withdrawal notices for consents this node did not hold (yet): a grant that arrives after its
-- own withdrawal (say, delivered out of order after an outage) is refused, so the consent can
-- never come back to life at the counterpart.
CREATE TABLE consent_tombstones (
    consent_id  TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    at          TEXT NOT NULL
);
