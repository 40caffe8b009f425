-- hookgate schema, version 2: instances and sinks paused at run time (`hookgate instances|sinks
-- pause NAME`, the admin API). One row per paused name; resuming deletes it. Every replica
-- reads the table about once a second.
CREATE TABLE hookgate_pauses (
    target       text NOT NULL,     -- instance | sink
    name         text NOT NULL,
    paused_at_ms bigint NOT NULL,   -- Unix milliseconds
    PRIMARY KEY (target, name)
);
