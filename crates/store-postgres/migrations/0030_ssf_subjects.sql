-- Shared Signals subjects and verification pacing (ADR 0028, SSF 1.0
-- §8.1.3 and §8.1.4.2). Streams carry every subject of their audience
-- (`default_subjects` "ALL"); a receiver may remove subjects (opaque ids),
-- and events about them are then not queued on its stream.
CREATE TABLE ssf_subjects (
    stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    PRIMARY KEY (stream_id, subject)
);

-- When the receiver last asked for a verification event
-- (`min_verification_interval` is measured from it).
ALTER TABLE ssf_streams ADD COLUMN verified_at BIGINT;
