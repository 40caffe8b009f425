-- hookgate schema, version 1. Ids are ULIDs in "C" collation, so they sort by arrival.
-- Bytes that may hold anything a provider sent (keys, ids, JSON) are bytea.

-- The idempotency table: one claim per (instance, event id) and per used replay guard.
CREATE TABLE hookgate_claims (
    key        bytea  PRIMARY KEY,   -- instance \0 event id
    gateway_id text   NOT NULL,      -- the stored envelope (or receipt, for a replay guard)
    expires_at bigint NOT NULL       -- Unix seconds; an expired claim is no claim
);
CREATE INDEX hookgate_claims_expiry ON hookgate_claims (expires_at);

-- Receipts: verified requests as kept (no credential headers), with their exact body.
CREATE TABLE hookgate_receipts (
    id         text COLLATE "C" PRIMARY KEY,
    provider   text   NOT NULL,
    status     text   NOT NULL,      -- accepted | unprocessable
    search_ids bytea[] NOT NULL,     -- the provider event ids it carries, for search
    receipt    bytea  NOT NULL,      -- JSON
    body       bytea  NOT NULL
);
CREATE INDEX hookgate_receipts_provider ON hookgate_receipts (provider, id);
CREATE INDEX hookgate_receipts_search ON hookgate_receipts USING gin (search_ids);

CREATE TABLE hookgate_envelopes (
    id         text COLLATE "C" PRIMARY KEY,
    receipt_id text COLLATE "C" NOT NULL,
    envelope   bytea NOT NULL        -- JSON, as delivered
);
CREATE INDEX hookgate_envelopes_receipt ON hookgate_envelopes (receipt_id);

-- One delivery task per (envelope, sink). status: 0 pending, 1 delivered, 2 dead.
-- A pending task is leased to a worker (of any replica) until leased_until; lease_token changes
-- at every lease and redelivery, so a worker whose lease ran out cannot record over the next.
-- seq is the order tasks were written in (the database's, not a replica's clock): "oldest
-- first" and per-lane order follow it.
CREATE SEQUENCE hookgate_task_seq;
CREATE TABLE hookgate_tasks (
    envelope_id      text COLLATE "C" NOT NULL,
    sink             text COLLATE "C" NOT NULL,
    receipt_id       text COLLATE "C" NOT NULL,
    seq              bigint   NOT NULL DEFAULT nextval('hookgate_task_seq'),
    status           smallint NOT NULL,
    attempts         integer  NOT NULL,
    round_attempts   integer  NOT NULL,
    created_at_ms    bigint   NOT NULL,
    round_started_ms bigint   NOT NULL,
    next_attempt_ms  bigint,              -- set whenever the task is pending
    last_error       text,
    lane             bytea    NOT NULL,   -- ordering lane; empty: no order
    lane_key         bytea,               -- sink \0 lane; NULL without a lane
    leased_until     bigint,              -- Unix ms; in no index, so a lease is a HOT update
    lease_token      bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (envelope_id, sink)
) WITH (fillfactor = 70);
CREATE INDEX hookgate_tasks_pending ON hookgate_tasks (sink, seq) WHERE status = 0;
-- The only index on lane_key: "is an older task of this lane pending?" is one index probe,
-- whatever the planner's statistics say.
CREATE INDEX hookgate_tasks_lanes ON hookgate_tasks (lane_key, seq)
    WHERE status = 0 AND lane_key IS NOT NULL;
CREATE INDEX hookgate_tasks_due ON hookgate_tasks (sink, next_attempt_ms) WHERE status = 0;
CREATE INDEX hookgate_tasks_dead ON hookgate_tasks (envelope_id, sink) WHERE status = 2;
CREATE INDEX hookgate_tasks_receipt ON hookgate_tasks (receipt_id);

CREATE TABLE hookgate_attempts (
    envelope_id text COLLATE "C" NOT NULL,
    sink        text COLLATE "C" NOT NULL,
    number      integer NOT NULL,
    attempt     bytea   NOT NULL,   -- JSON
    PRIMARY KEY (envelope_id, sink, number)
);

-- Tasks are updated at every lease and attempt: vacuum and analyze them sooner than the
-- server's defaults (fresh statistics keep the queue's plans on their indexes).
ALTER TABLE hookgate_tasks SET (autovacuum_vacuum_scale_factor = 0.05,
                                autovacuum_analyze_scale_factor = 0.02);
