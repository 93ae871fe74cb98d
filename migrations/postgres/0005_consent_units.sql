-- The organisational unit (from the caseworker's or consent-admin's token) that recorded or
-- bound a consent: caseworkers read only what their unit recorded or bound.
ALTER TABLE consents ADD COLUMN recorded_unit TEXT;
ALTER TABLE consents ADD COLUMN bound_unit TEXT;
