-- The archive: one row per event of a chat (a message of the customer, the bot or a person; a handoff, an opt-out,
-- a lifecycle change, a dead letter). event_id is unique so that a write retried after a crash inserts nothing twice.

-- Accent-insensitive Portuguese search: the portuguese configuration with unaccent before the stemmer, so that
-- "preco" finds "preço" and "entrega" finds "entregam". (unaccent is a trusted extension: a database owner may
-- create it.)
CREATE EXTENSION IF NOT EXISTS unaccent;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'pt_unaccent') THEN
    CREATE TEXT SEARCH CONFIGURATION pt_unaccent (COPY = portuguese);
    ALTER TEXT SEARCH CONFIGURATION pt_unaccent
      ALTER MAPPING FOR hword, hword_part, word WITH unaccent, portuguese_stem;
  END IF;
END
$$;

CREATE TABLE archive_events (
  id bigserial PRIMARY KEY,
  event_id text NOT NULL UNIQUE,
  chat text NOT NULL,                 -- gateway:instance:chat_id
  gateway text NOT NULL,
  instance text NOT NULL,
  chat_id text NOT NULL,
  kind text NOT NULL,                 -- message, handoff_request, opt_out, opt_in, out_of_hours, pause, resume, close, dead_letter
  author text CHECK (author IN ('customer', 'bot', 'human')),
  CHECK (kind <> 'message' OR author IS NOT NULL),
  text text NOT NULL DEFAULT '',
  media_kind text NOT NULL DEFAULT '',
  transcript text NOT NULL DEFAULT '',
  gateway_message_id text NOT NULL DEFAULT '',
  delivery text NOT NULL DEFAULT '',  -- bot parts: sent | failed
  at timestamptz NOT NULL,            -- when it happened (a message: when it was received or sent)
  archived_at timestamptz NOT NULL DEFAULT now(),
  data jsonb NOT NULL DEFAULT '{}'::jsonb,
  search tsvector GENERATED ALWAYS AS (to_tsvector('pt_unaccent'::regconfig, text || ' ' || transcript)) STORED
);

CREATE INDEX archive_events_chat_at ON archive_events (chat, at, id);
CREATE INDEX archive_events_at ON archive_events (at);
CREATE INDEX archive_events_search ON archive_events USING gin (search);

-- What an erasure leaves: a one-way hash of the chat id and when. Events of that chat dated before it are not
-- written (a writer may still hold some in flight).
CREATE TABLE archive_erasures (
  chat_hash text PRIMARY KEY,
  erased_at timestamptz NOT NULL
);
