-- Policy history (issue 18 §4, ADR 0034): every version stays in
-- `policies`, numbered by `seq`; each new one records who installed it
-- (`admin` or a `usr_…` id). Versions stored before this have no author.
ALTER TABLE policies ADD COLUMN author TEXT;
