-- The principal of a `session-revoked` event: the revoked token's `sub`,
-- kept when the event is queued, so that its SET names the person (or the
-- agent) as the CAEP interoperability profile asks (`iss_sub`, ADR 0039).
ALTER TABLE ssf_events ADD COLUMN principal TEXT;

-- Events already waiting: from their token, while it is still stored.
UPDATE ssf_events SET principal = (SELECT t.subject FROM tokens t WHERE t.jti = ssf_events.subject)
WHERE kind = 'session-revoked';
