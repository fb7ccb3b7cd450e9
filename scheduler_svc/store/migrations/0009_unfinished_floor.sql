-- Migration 0009: where unfinished runs can be (schema.sql: unfinished_runs_floor), so
-- that the statements looking for them prune job_runs to the days that may hold them.
--
-- Safe while the previous release (schema 8) runs: a table it never reads, and a
-- trigger on job_runs that keeps the table true for its inserts too. The floor starts
-- at -infinity (every partition), and only this release's maintenance raises it.

-- step: the floor of unfinished runs
SET LOCAL lock_timeout = '10s';

CREATE TABLE IF NOT EXISTS unfinished_runs_floor (
    one   boolean PRIMARY KEY DEFAULT true CONSTRAINT unfinished_runs_floor_one CHECK (one),
    since timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO unfinished_runs_floor DEFAULT VALUES ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION unfinished_runs_floor_lower() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE unfinished_runs_floor SET since = least(since, NEW.scheduled_for);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER job_runs_below_floor
    BEFORE INSERT ON job_runs
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'running') AND NEW.scheduled_for < now() - interval '1 day')
    EXECUTE FUNCTION unfinished_runs_floor_lower();

UPDATE schema_version SET version = 9, applied_at = now() WHERE version < 9;
