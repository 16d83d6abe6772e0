-- Clients that register themselves, and gateways (DESIGN §9). Every agent
-- has an origin; one registered by a client metadata document is found by
-- its URL; a public client holds no credential. A resource may name the
-- agent that guards it as a gateway and the audiences it may exchange for.
ALTER TABLE agents ADD COLUMN origin TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE agents ADD COLUMN metadata_url TEXT;
ALTER TABLE agents ADD COLUMN public_client INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET origin = 'spawned' WHERE kind = 'ephemeral';
CREATE UNIQUE INDEX agents_metadata_url ON agents (metadata_url) WHERE metadata_url IS NOT NULL;
ALTER TABLE resources ADD COLUMN gateway TEXT;
ALTER TABLE resources ADD COLUMN exchange_to TEXT NOT NULL DEFAULT '[]';
