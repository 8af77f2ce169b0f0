"""SQLite store: WAL, one transaction per state change, schema migrations from v1.

No exporter is ever granted to two leases: a partial unique index allows at
most one not-ended lease per assigned exporter, so even a buggy caller gets a
`Conflict` instead of a double grant. Audit events are inserted in the same
transaction as the change they record (`_writing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from controllerd.records import AccessPolicy, AuditEvent, Client, Condition, Exporter, Lease, TokenRecord
from controllerd.store.base import Conflict, NotFound, StorageError, StorageFull
from jumpstarter.errors import ConfigError
from jumpstarter.files import make_dirs

if TYPE_CHECKING:
    from controllerd.audit import AuditQuery

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE exporters (
        namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL, labels TEXT NOT NULL,
        enabled INTEGER NOT NULL, status INTEGER NOT NULL, status_message TEXT NOT NULL,
        last_seen REAL, registered INTEGER NOT NULL, devices TEXT NOT NULL, created REAL NOT NULL,
        PRIMARY KEY (namespace, name));
    CREATE TABLE clients (
        namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL, labels TEXT NOT NULL,
        created REAL NOT NULL, PRIMARY KEY (namespace, name));
    CREATE TABLE leases (
        namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL, client TEXT NOT NULL,
        selector TEXT NOT NULL, exporter_name TEXT, duration REAL, begin_time REAL, end_time REAL,
        tags TEXT NOT NULL, context TEXT NOT NULL, allow_disabled INTEGER NOT NULL, created REAL NOT NULL,
        seq INTEGER NOT NULL, exporter TEXT, priority INTEGER NOT NULL, effective_begin REAL,
        effective_end REAL, released INTEGER NOT NULL, ended INTEGER NOT NULL, paused INTEGER NOT NULL,
        conditions TEXT NOT NULL, PRIMARY KEY (namespace, name));
    CREATE UNIQUE INDEX leases_one_active_per_exporter ON leases (namespace, exporter)
        WHERE exporter IS NOT NULL AND ended = 0;
    CREATE INDEX leases_not_ended ON leases (ended, seq);
    CREATE TABLE policies (
        namespace TEXT NOT NULL, name TEXT NOT NULL, exporter_selector TEXT NOT NULL,
        client_selector TEXT NOT NULL, priority INTEGER NOT NULL, maximum_duration REAL,
        created REAL NOT NULL, PRIMARY KEY (namespace, name));
    CREATE TABLE tokens (
        jti TEXT PRIMARY KEY, subject TEXT NOT NULL, namespace TEXT NOT NULL, kind TEXT NOT NULL,
        name TEXT NOT NULL, issued REAL NOT NULL, expires REAL NOT NULL, revoked INTEGER NOT NULL);
    CREATE INDEX tokens_subject ON tokens (subject);
    """,
    # v2: the per-client pending lease quota counts these on every CreateLease
    """
    CREATE INDEX leases_pending_by_client ON leases (namespace, client)
        WHERE exporter IS NULL AND ended = 0;
    """,
    # v3: the audit history; AUTOINCREMENT so an id is never reused after pruning
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, namespace TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('lease', 'exporter', 'client', 'policy')),
        name TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,
        lease TEXT, exporter TEXT, client TEXT,
        reason TEXT NOT NULL CHECK (length(reason) <= 1024),
        message TEXT NOT NULL CHECK (length(message) <= 1024),
        detail TEXT NOT NULL CHECK (length(detail) <= 8192));
    CREATE INDEX audit_lease ON audit (namespace, lease);
    CREATE INDEX audit_exporter ON audit (namespace, exporter);
    CREATE INDEX audit_client ON audit (namespace, client);
    CREATE INDEX audit_time ON audit (time);
    """,
    # v4: board states (issue 12); defaults keep every existing row what it was
    """
    ALTER TABLE exporters ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown'
        CHECK (health IN ('healthy', 'unhealthy', 'maintenance', 'unknown'));
    ALTER TABLE exporters ADD COLUMN health_reason TEXT NOT NULL DEFAULT ''
        CHECK (length(health_reason) <= 1024);
    ALTER TABLE leases ADD COLUMN out_of_service_ok INTEGER NOT NULL DEFAULT 0;
    """,
]


def _private_files(path: str) -> None:
    """The database, its directory, -wal and -shm: the controller's user only, whatever the umask.

    SQLite creates -wal and -shm with the database file's mode, so the file is
    created 0600 before SQLite opens it; files left by older versions are narrowed.
    """
    make_dirs(os.path.dirname(os.path.abspath(path)), 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # holds token metadata
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


R = TypeVar("R")


def _clone(record: R) -> R:
    """A shallow copy of a record: every scheduler pass copies all of them, and this is 3x cheaper
    than copy.copy or dataclasses.replace (tests/bench/bench_load.py)."""
    out = object.__new__(type(record))
    out.__dict__.update(record.__dict__)
    return out


_JSON_FIELDS = {"labels", "devices", "tags", "context", "conditions", "detail"}
_BOOL_FIELDS = {
    "enabled",
    "registered",
    "allow_disabled",
    "out_of_service_ok",
    "released",
    "ended",
    "paused",
    "revoked",
}


class SqliteStore:
    def __init__(self, path: str) -> None:
        """Open (or create) the database; any problem is a ConfigError naming `path`."""
        self.path = path
        self._exporter_cache: dict[tuple[str, str], Exporter] | None = None
        self._open_leases: dict[tuple[str, str], Lease] | None = None  # not ended, decoded
        try:
            if path != ":memory:":
                _private_files(path)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{path}: cannot open the controller database: {problem}") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise ConfigError(
                f"{self.path}: schema v{version} is newer than this controllerd (v{len(MIGRATIONS)})"
            )
        for index in range(version, len(MIGRATIONS)):
            self.db.executescript(f"BEGIN; {MIGRATIONS[index]} PRAGMA user_version = {index + 1}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # -- writes ------------------------------------------------------------------

    def _write(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        """Execute one writing statement; a full disk or an I/O error becomes a StorageError."""
        try:
            return self.db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if primary == sqlite3.SQLITE_FULL:
                raise StorageFull(
                    f"controller database {self.path}: disk full (no space left on device); nothing was stored"
                ) from None
            if primary == sqlite3.SQLITE_IOERR:
                raise StorageError(
                    f"controller database {self.path}: cannot write ({exc}); nothing was stored"
                ) from None
            raise

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around every write of the block: if anything fails, none of it is stored.

        Nested blocks join the outer one. The block must not await anything that suspends, or
        another coroutine's writes would join (and roll back with) this transaction.
        """
        if self.db.in_transaction:
            yield
            return
        self._write("BEGIN IMMEDIATE")
        try:
            yield
            self._write("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.rollback()
            self._exporter_cache = self._open_leases = None  # they may hold rolled-back changes
            raise

    # -- row <-> record ------------------------------------------------------

    @staticmethod
    def _encode(record: Any) -> dict[str, Any]:
        row = asdict(record)
        for key in list(row):
            if key in _JSON_FIELDS:
                row[key] = json.dumps(row[key], sort_keys=True)
            elif key in _BOOL_FIELDS:
                row[key] = int(row[key])
        return row

    @staticmethod
    def _decode(cls: Any, row: sqlite3.Row) -> Any:
        data = dict(row)
        for key in list(data):
            if key in _JSON_FIELDS:
                data[key] = json.loads(data[key])
            elif key in _BOOL_FIELDS:
                data[key] = bool(data[key])
        if cls is Lease:
            data["conditions"] = [Condition(**c) for c in data["conditions"]]
        return cls(**data)

    def _upsert(self, table: str, record: Any) -> None:
        # A true upsert: INSERT OR REPLACE would silently delete a row that collides
        # on another unique index (another exporter's active lease), never that.
        row = self._encode(record)
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        key = "jti" if table == "tokens" else "namespace, name"
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k not in ("namespace", "name", "jti"))
        try:
            self._write(
                f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}",
                row,
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from None

    def _get(self, cls: Any, table: str, namespace: str, name: str) -> Any:
        row = self.db.execute(
            f"SELECT * FROM {table} WHERE namespace=? AND name=?", (namespace, name)
        ).fetchone()
        if row is None:
            raise NotFound(f"{table[:-1]} {namespace}/{name} not found")
        return self._decode(cls, row)

    def _list(
        self, cls: Any, table: str, namespace: str | None, extra: str = "", order: str = "name"
    ) -> list[Any]:
        where = "WHERE namespace=?" if namespace is not None else "WHERE 1=1"
        args: tuple[Any, ...] = (namespace,) if namespace is not None else ()
        rows = self.db.execute(f"SELECT * FROM {table} {where} {extra} ORDER BY {order}", args).fetchall()
        return [self._decode(cls, r) for r in rows]

    def _delete(self, table: str, namespace: str, name: str) -> None:
        cursor = self._write(f"DELETE FROM {table} WHERE namespace=? AND name=?", (namespace, name))
        if cursor.rowcount == 0:
            raise NotFound(f"{table[:-1]} {namespace}/{name} not found")

    @contextlib.contextmanager
    def _writing(self, audit: Sequence[AuditEvent], *, atomic: bool = False) -> Iterator[None]:
        """The change made in the block and its audit events: committed together, or neither.

        Without events (and not `atomic`) each statement commits on its own (or with the
        transaction of an enclosing `atomic()` block)."""
        if not audit and not atomic:
            yield
            return
        with self.atomic():
            yield
            for event in audit:
                self._insert_audit(event)

    def _insert_audit(self, event: AuditEvent) -> None:
        # by hand, not `_encode`: asdict's deep copy would be most of the cost of a grant's write
        cursor = self._write(
            "INSERT INTO audit (time, namespace, kind, name, action, actor, lease, exporter, client,"
            " reason, message, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.time,
                event.namespace,
                event.kind,
                event.name,
                event.action,
                event.actor,
                event.lease,
                event.exporter,
                event.client,
                event.reason,
                event.message,
                json.dumps(event.detail, sort_keys=True),
            ),
        )
        event.id = int(cursor.lastrowid or 0)

    # -- exporters -------------------------------------------------------------
    # Exporters are read on every scheduler pass: keep them decoded in memory. This
    # process is the database's only writer (admin goes through the controller), so
    # the cache is updated with every write and never goes stale.

    def _exporters(self) -> dict[tuple[str, str], Exporter]:
        if self._exporter_cache is None:
            rows = self._list(Exporter, "exporters", None)
            self._exporter_cache = {(e.namespace, e.name): e for e in rows}
        return self._exporter_cache

    @staticmethod
    def _copy(exporter: Exporter) -> Exporter:
        copied = _clone(exporter)
        copied.labels = dict(exporter.labels)
        return copied

    async def get_exporter(self, namespace: str, name: str) -> Exporter:
        exporter = self._exporters().get((namespace, name))
        if exporter is None:
            raise NotFound(f"exporter {namespace}/{name} not found")
        return self._copy(exporter)

    async def list_exporters(self, namespace: str | None = None) -> list[Exporter]:
        cache = self._exporters()
        return [self._copy(e) for key, e in sorted(cache.items()) if namespace is None or key[0] == namespace]

    async def save_exporter(self, exporter: Exporter, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._upsert("exporters", exporter)
        self._exporters()[(exporter.namespace, exporter.name)] = self._copy(exporter)

    async def delete_exporter(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._delete("exporters", namespace, name)
        self._exporters().pop((namespace, name), None)

    # -- clients ---------------------------------------------------------------

    async def get_client(self, namespace: str, name: str) -> Client:
        return self._get(Client, "clients", namespace, name)  # type: ignore[no-any-return]

    async def list_clients(self, namespace: str | None = None) -> list[Client]:
        return self._list(Client, "clients", namespace)

    async def save_client(self, client: Client, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._upsert("clients", client)

    async def delete_client(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._delete("clients", namespace, name)

    # -- leases ----------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> Lease:
        return self._get(Lease, "leases", namespace, name)  # type: ignore[no-any-return]

    # Not-ended leases are read on every scheduler pass too: the same cache as for
    # exporters, so a pass does not decode every queued lease from JSON again.

    def _open(self) -> dict[tuple[str, str], Lease]:
        if self._open_leases is None:
            rows = self._list(Lease, "leases", None, "AND ended = 0", order="seq")
            self._open_leases = {(le.namespace, le.name): le for le in rows}
        return self._open_leases

    @staticmethod
    def _copy_lease(lease: Lease) -> Lease:
        copied = _clone(lease)  # callers change what they get back: never the cached object
        copied.tags, copied.context = dict(lease.tags), dict(lease.context)
        copied.conditions = [_clone(c) for c in lease.conditions]
        return copied

    def _cache_lease(self, lease: Lease) -> None:
        if lease.ended:
            self._open().pop((lease.namespace, lease.name), None)
        else:
            self._open()[(lease.namespace, lease.name)] = self._copy_lease(lease)

    async def list_leases(self, namespace: str | None = None, *, only_active: bool = False) -> list[Lease]:
        if not only_active:
            return self._list(Lease, "leases", namespace, order="seq")
        leases = sorted(self._open().values(), key=lambda le: le.seq)
        return [self._copy_lease(le) for le in leases if namespace is None or le.namespace == namespace]

    async def create_lease(self, lease: Lease, audit: Sequence[AuditEvent] = ()) -> Lease:
        with self._writing(audit):
            exists = self.db.execute(
                "SELECT 1 FROM leases WHERE namespace=? AND name=?", (lease.namespace, lease.name)
            ).fetchone()
            if exists:
                raise Conflict(f"lease {lease.namespace}/{lease.name} already exists")
            lease.seq = int(self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM leases").fetchone()[0])
            self._upsert("leases", lease)
        self._cache_lease(lease)
        return lease

    async def save_lease(self, lease: Lease, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._upsert("leases", lease)
        self._cache_lease(lease)

    async def count_pending_leases(self, namespace: str, client: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM leases WHERE namespace=? AND client=? AND exporter IS NULL AND ended = 0",
            (namespace, client),
        ).fetchone()
        return int(row[0])

    # -- policies ----------------------------------------------------------------

    async def list_policies(self, namespace: str | None = None) -> list[AccessPolicy]:
        return self._list(AccessPolicy, "policies", namespace)

    async def save_policy(self, policy: AccessPolicy, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._upsert("policies", policy)

    async def delete_policy(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit):
            self._delete("policies", namespace, name)

    # -- tokens ------------------------------------------------------------------

    async def save_token(self, token: TokenRecord) -> None:
        self._upsert("tokens", token)

    async def save_tokens(self, tokens: list[TokenRecord], audit: Sequence[AuditEvent] = ()) -> None:
        with self._writing(audit, atomic=True):  # all of them or none, with their audit events
            for token in tokens:
                self._upsert("tokens", token)

    async def list_tokens(self, subject: str | None = None) -> list[TokenRecord]:
        if subject is None:
            rows = self.db.execute("SELECT * FROM tokens ORDER BY issued").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM tokens WHERE subject=? ORDER BY issued", (subject,)
            ).fetchall()
        return [self._decode(TokenRecord, r) for r in rows]

    async def revoked_tokens(self) -> list[TokenRecord]:
        rows = self.db.execute("SELECT * FROM tokens WHERE revoked = 1 ORDER BY issued").fetchall()
        return [self._decode(TokenRecord, r) for r in rows]

    # -- audit -------------------------------------------------------------------

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        with self._writing(events):
            pass

    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        where, args = ["1=1"], []
        for column in ("namespace", "lease", "exporter", "client"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if query.since is not None:
            where.append("time>=?")
            args.append(query.since)
        rows = self.db.execute(
            f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*args, query.limit)
        ).fetchall()
        return [self._decode(AuditEvent, r) for r in reversed(rows)]

    async def prune_audit(self, before: float, max_records: int) -> int:
        with self._writing([], atomic=True):
            removed = self._write("DELETE FROM audit WHERE time < ?", (before,)).rowcount
            newest = self.db.execute("SELECT MAX(id) FROM audit").fetchone()[0]
            if newest is not None:
                removed += self._write("DELETE FROM audit WHERE id <= ?", (newest - max_records,)).rowcount
        return int(removed)
