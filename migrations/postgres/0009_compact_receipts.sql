-- An admitted message's receipt is no longer stored whole with its message id: only what it is
-- rebuilt from besides the admitting entry (in audit_entries) and its commit's checkpoint (kept
-- in audit_checkpoints): the inclusion proof's hashes, concatenated, and that checkpoint's tree
-- size. The receipt (about 2,400 bytes) was most of what admitting a message wrote. Rows with a
-- receipt (older rows, and withdrawal notices, whose receipt carries an acknowledgement) keep it.
ALTER TABLE seen_messages ADD COLUMN receipt_proof BYTEA;
ALTER TABLE seen_messages ADD COLUMN receipt_tree_size BIGINT;
