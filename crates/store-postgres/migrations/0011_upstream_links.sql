-- People linked to identities at upstream OpenID Connect providers
-- (DESIGN §10): one row per (issuer, subject); a person may have several.
CREATE TABLE upstream_links (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX upstream_links_user ON upstream_links (user_id);
