-- Who may act next with a grant's tokens (RFC 8693 §4.4 `may_act`, ADR
-- 0024): a space-separated list of agent ids and `group:<name>`s, or NULL
-- when the grant does not restrict it.
ALTER TABLE grants ADD COLUMN may_act TEXT;
