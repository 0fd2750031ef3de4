-- casebook PostgreSQL schema, version 1. Applied once, in one transaction,
-- by `PostgresStore::connect(url, create = true)` (`casebook init`).
-- Migrations are append-only: never edit a released file, add 0002_*.sql.

-- One row per event of every school's log. `value` holds exactly the bytes
-- the sled backend stores (MessagePack envelope body || BLAKE3 hash), so a
-- log copied between backends keeps its hashes and verifies on both. The
-- other columns are indexes over that value; `verify` checks they agree.
CREATE TABLE events (
    school      text        NOT NULL,
    position    bigint      NOT NULL CHECK (position >= 1),
    stream      uuid        NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 1),
    event_id    uuid        NOT NULL,
    recorded_at timestamptz NOT NULL,
    value       bytea       NOT NULL,
    PRIMARY KEY (school, position),
    UNIQUE (school, stream, version),
    UNIQUE (school, event_id)
);

-- The last durable event of each school's log. Every append locks its
-- school's row FOR UPDATE: that lock serializes writers across processes,
-- so positions stay gapless and the chain correct.
CREATE TABLE heads (
    school      text        PRIMARY KEY,
    position    bigint      NOT NULL,
    hash        bytea       NOT NULL,
    recorded_at timestamptz
);

-- Projection checkpoints: derived data outside the hash chain.
CREATE TABLE checkpoints (
    school text  NOT NULL,
    name   text  NOT NULL,
    bytes  bytea NOT NULL,
    PRIMARY KEY (school, name)
);

-- Events are immutable: UPDATE, DELETE and TRUNCATE are refused.
CREATE FUNCTION casebook_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'casebook events are append-only: % on table events is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION casebook_refuse_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION casebook_refuse_change();

-- Row-level security: a connection sees and writes only the school named by
-- its `casebook.school` setting (casebook sets it per log connection).
-- FORCE makes it apply to the tables' owner too; superusers bypass it.
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY events_one_school ON events
    USING (school = current_setting('casebook.school', true))
    WITH CHECK (school = current_setting('casebook.school', true));

ALTER TABLE heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE heads FORCE ROW LEVEL SECURITY;
CREATE POLICY heads_one_school ON heads
    USING (school = current_setting('casebook.school', true))
    WITH CHECK (school = current_setting('casebook.school', true));

ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY checkpoints_one_school ON checkpoints
    USING (school = current_setting('casebook.school', true))
    WITH CHECK (school = current_setting('casebook.school', true));
