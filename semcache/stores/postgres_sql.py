"""Every SQL statement of the PostgreSQL store (:mod:`semcache.stores.postgres`).

All tables live in one schema (default ``semcache``; the ``schema`` option lets several
caches share a database). ``{s}`` in a statement is that schema, quoted by
:func:`render`; values are always bound parameters, never formatted in.

Tables
------
``head``
    One row: ``seq`` the newest change-log position, ``floor`` the position up to which
    the log was compacted away, ``epoch`` a random id made when the schema was created.
    Every write takes its positions with ``UPDATE head SET seq = seq + n``: the row lock
    serialises writers, so positions are handed out in commit order and a reader that
    has read up to position p never later sees a row <= p commit. (A ``bigserial`` does
    not give that: a transaction can take 5, another 6 and commit first; a reader then
    moves past 6 and never reads 5.)
``entries``
    One row per live entry: the index metadata as typed columns, the float32 vector as
    raw ``bytea``, and ``record``, the JSON text ``{"prompt": ..., "completion": ...}``.
    An entry's id is the log position of its put. ``last_hit`` is reported by the nodes
    in batches and orders the janitor's LRU eviction.
``log``
    ``(seq, entry_id, op)``: op 1 put, 2 metadata update, 3 delete, 4 clear
    (``entry_id = -1``). ``at`` lets the janitor compact records older than a horizon.
``settings``, ``blobs``
    The cache settings (JSON text, one row) and opaque blobs (the fitted projection).
``scopes``
    ``(scope, tenant)``: the tenant of each scope id, so a tenant's entries can be
    found again (scope ids are hashes).
``counters``
    ``(name, value)``: hits, misses, puts... added by every node, and ``since``.
"""

from __future__ import annotations

from typing import Final

OP_PUT: Final = 1
OP_UPDATE: Final = 2
OP_DELETE: Final = 3
OP_CLEAR: Final = 4


def render(sql: str, schema: str) -> str:
    """``sql`` with ``{s}`` replaced by the quoted schema name (validated by the caller)."""
    return sql.replace("{s}", f'"{schema}"')


# ----------------------------------------------------------------------- schema
#: Whether the schema's tables exist (``to_regclass`` is NULL for a missing table); asks
#: for the newest table, so a schema made by an earlier version gets the tables it lacks.
TABLES_EXIST: Final = "SELECT to_regclass(%(head)s) IS NOT NULL AND to_regclass(%(newest)s) IS NOT NULL"

#: Serialises schema creation across processes (two concurrent CREATE TABLE IF NOT
#: EXISTS can still collide on the catalog's unique indexes).
DDL_LOCK: Final = "SELECT pg_advisory_xact_lock(%(key)s)"

CREATE: Final = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        seq bigint NOT NULL,
        floor bigint NOT NULL,
        epoch text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {s}.entries (
        id bigint PRIMARY KEY,
        scope text NOT NULL,
        key text NOT NULL,
        fingerprint text NOT NULL,
        created double precision NOT NULL,
        expires double precision,
        threshold double precision,
        n_wrong integer NOT NULL DEFAULT 0,
        n_right integer NOT NULL DEFAULT 0,
        vector bytea NOT NULL,
        record text NOT NULL,
        last_hit double precision)""",
    "CREATE INDEX IF NOT EXISTS entries_expires ON {s}.entries (expires) WHERE expires IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS entries_recency ON {s}.entries ((coalesce(last_hit, created)))",
    """CREATE TABLE IF NOT EXISTS {s}.log (
        seq bigint PRIMARY KEY,
        entry_id bigint NOT NULL,
        op smallint NOT NULL,
        at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS {s}.settings (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        value text NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS {s}.blobs (name text PRIMARY KEY, data bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.scopes (scope text PRIMARY KEY, tenant text)",
    "CREATE TABLE IF NOT EXISTS {s}.counters (name text PRIMARY KEY, value bigint NOT NULL)",
    "INSERT INTO {s}.head (one, seq, floor, epoch) VALUES (true, 0, 0, %(epoch)s) ON CONFLICT DO NOTHING",
)

# --------------------------------------------------------------------- settings
LOAD_SETTINGS: Final = "SELECT value FROM {s}.settings"
INIT_SETTINGS: Final = "INSERT INTO {s}.settings (one, value) VALUES (true, %(value)s) ON CONFLICT DO NOTHING"
SAVE_SETTINGS: Final = """INSERT INTO {s}.settings (one, value) VALUES (true, %(value)s)
    ON CONFLICT (one) DO UPDATE SET value = excluded.value"""
GET_BLOB: Final = "SELECT data FROM {s}.blobs WHERE name = %(name)s"
SET_BLOB: Final = """INSERT INTO {s}.blobs (name, data) VALUES (%(name)s, %(data)s)
    ON CONFLICT (name) DO UPDATE SET data = excluded.data"""

# ----------------------------------------------------------------------- writes
#: A put of n entries in ONE statement (so one round trip in autocommit): take n
#: positions from the head row (its lock serialises writers until commit), insert the
#: entries with ids = those positions and their log records, and notify the listeners
#: (delivered at commit). Arrays are aligned, one element per entry.
PUT: Final = """
WITH h AS (
    UPDATE {s}.head SET seq = seq + cardinality(%(scope)s::text[]) WHERE one RETURNING seq, epoch
), e AS (
    INSERT INTO {s}.entries (id, scope, key, fingerprint, created, expires, threshold,
                             n_wrong, n_right, vector, record)
    SELECT h.seq - cardinality(%(scope)s::text[]) + u.ord, u.scope, u.key, u.fp, u.created,
           u.expires, u.threshold, u.n_wrong, u.n_right, u.vector, u.record
    FROM h, unnest(%(scope)s::text[], %(key)s::text[], %(fp)s::text[],
                   %(created)s::float8[], %(expires)s::float8[], %(threshold)s::float8[],
                   %(n_wrong)s::int[], %(n_right)s::int[], %(vector)s::bytea[], %(record)s::text[])
         WITH ORDINALITY AS u(scope, key, fp, created, expires, threshold, n_wrong, n_right,
                              vector, record, ord)
    RETURNING id
), l AS (
    INSERT INTO {s}.log (seq, entry_id, op) SELECT id, id, 1 FROM e
)
SELECT h.seq, h.epoch, pg_notify(%(channel)s, h.seq::text) FROM h
"""

#: First statement of every other write: lock the head row before touching entries,
#: so writers always lock in the same order (no deadlock between a delete and a put).
LOCK_HEAD: Final = "SELECT seq, epoch FROM {s}.head WHERE one FOR UPDATE"

DELETE_ENTRIES: Final = "DELETE FROM {s}.entries WHERE id = ANY(%(ids)s::bigint[]) RETURNING id"

#: Log records for ``entry_ids`` at positions base+1, base+2, ... and the head moved past them.
APPEND_LOG: Final = """
WITH l AS (
    INSERT INTO {s}.log (seq, entry_id, op)
    SELECT %(base)s + u.ord, u.id, %(op)s FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(id, ord)
)
UPDATE {s}.head SET seq = %(base)s + cardinality(%(ids)s::bigint[]) WHERE one
RETURNING seq, pg_notify(%(channel)s, seq::text)
"""

UPDATE_META: Final = """UPDATE {s}.entries SET scope = %(scope)s, key = %(key)s, fingerprint = %(fp)s,
    created = %(created)s, expires = %(expires)s, threshold = %(threshold)s,
    n_wrong = %(n_wrong)s, n_right = %(n_right)s
    WHERE id = %(id)s RETURNING vector"""

CLEAR_ENTRIES: Final = ("DELETE FROM {s}.entries", "DELETE FROM {s}.blobs")

# ------------------------------------------------------------------------ reads
GET_RECORD: Final = "SELECT record FROM {s}.entries WHERE id = %(id)s"

HEAD: Final = "SELECT seq, floor, epoch FROM {s}.head WHERE one"

_ENTRY_COLUMNS: Final = ("e.scope, e.key, e.fingerprint, e.created, e.expires, e.threshold, "
                         "e.n_wrong, e.n_right")

#: The log after ``since`` joined with the entries it names, plus the head row, read in
#: ONE statement (one snapshot, one round trip). At most ``limit`` records; an idle poll
#: returns the head row alone (log columns NULL).
CHANGES: Final = f"""
SELECT h.seq, h.floor, h.epoch, l.seq, l.entry_id, l.op, {_ENTRY_COLUMNS}, e.vector
FROM {{s}}.head h
LEFT JOIN LATERAL (
    SELECT seq, entry_id, op FROM {{s}}.log
    WHERE seq > %(since)s AND seq <= h.seq ORDER BY seq LIMIT %(limit)s
) l ON true
LEFT JOIN {{s}}.entries e ON e.id = l.entry_id AND l.op IN (1, 2)
WHERE h.one
ORDER BY l.seq
"""

#: Every live entry, in id order (run inside a REPEATABLE READ transaction after HEAD).
LOAD_ALL: Final = f"SELECT e.id, {_ENTRY_COLUMNS}, e.vector FROM {{s}}.entries e ORDER BY e.id"

#: What :meth:`Store.load_digests` needs, hashing the vectors in the engine.
LOAD_DIGESTS: Final = """SELECT id, scope, key, fingerprint, vector FROM {s}.entries ORDER BY id"""

COUNT: Final = "SELECT count(*) FROM {s}.entries"

# ------------------------------------------------------------- hits and janitor
#: Hit times reported by a node, in one batch; never moves a time backwards.
REPORT_HITS: Final = """
UPDATE {s}.entries e SET last_hit = u.t
FROM unnest(%(ids)s::bigint[], %(times)s::float8[]) AS u(id, t)
WHERE e.id = u.id AND (e.last_hit IS NULL OR e.last_hit < u.t)
"""

#: One janitor at a time across every node: a transaction-scoped advisory lock.
JANITOR_LOCK: Final = "SELECT pg_try_advisory_xact_lock(%(key)s)"

EXPIRED: Final = """SELECT id FROM {s}.entries WHERE expires IS NOT NULL AND expires <= %(now)s
    ORDER BY expires LIMIT %(limit)s"""

#: The ``n`` least recently used entries (last hit, else creation time).
LRU_VICTIMS: Final = """SELECT id FROM {s}.entries ORDER BY coalesce(last_hit, created), id
    LIMIT %(n)s"""

#: Drop log records older than the horizon (oldest first, at most ``limit`` per pass),
#: never the newest one, and move the floor up to the last record dropped: a reader
#: behind the floor may have missed a dropped record and reloads.
COMPACT: Final = """
WITH d AS (
    DELETE FROM {s}.log WHERE seq IN (
        SELECT seq FROM {s}.log WHERE at < now() - make_interval(secs => %(secs)s)
            AND seq < (SELECT seq FROM {s}.head WHERE one)
        ORDER BY seq LIMIT %(limit)s)
    RETURNING seq
)
UPDATE {s}.head SET floor = greatest(floor, (SELECT coalesce(max(seq), 0) FROM d)) WHERE one
RETURNING (SELECT count(*) FROM d)
"""

# ----------------------------------------------------------- scopes, counters
NOTE_SCOPES: Final = """INSERT INTO {s}.scopes (scope, tenant)
    SELECT * FROM unnest(%(scopes)s::text[], %(tenants)s::text[]) ON CONFLICT DO NOTHING"""
SCOPE_TENANTS: Final = "SELECT scope, tenant FROM {s}.scopes"
ADD_COUNTERS: Final = """INSERT INTO {s}.counters (name, value)
    SELECT * FROM unnest(%(names)s::text[], %(values)s::bigint[])
    UNION ALL SELECT 'since', extract(epoch FROM now())::bigint
    ON CONFLICT (name) DO UPDATE SET value = {s}.counters.value + excluded.value
    WHERE {s}.counters.name <> 'since'"""
LOAD_COUNTERS: Final = "SELECT name, value FROM {s}.counters"

LISTEN: Final = "LISTEN {channel}"
