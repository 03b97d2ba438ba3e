-- Several businesses in one deployment (TENANTS_FILE): every row says whose it is. `chat` already carries it
-- (`<tenant>/gateway:instance:chat_id` for a named tenant); the column lets a tenant's search and a whole tenant's
-- export or erasure use an index. Rows written before it are the single business's: 'default'.
ALTER TABLE archive_events ADD COLUMN tenant text NOT NULL DEFAULT 'default';
UPDATE archive_events SET tenant = split_part(split_part(chat, ':', 1), '/', 1)
  WHERE split_part(chat, ':', 1) LIKE '%/%';
CREATE INDEX archive_events_tenant_at ON archive_events (tenant, at);
