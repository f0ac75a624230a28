"""Tables and the database engine of the annotation app.

SQLite by default (WAL journal, synchronous=FULL, so a commit survives a killed server), any
SQLAlchemy URL otherwise (PostgreSQL for a team). Every write is one transaction: on SQLite a write
transaction starts with BEGIN IMMEDIATE, so concurrent writers queue on the busy timeout instead of
failing on a lock upgrade, and two annotators submitting at the same moment both land.

The label rules are constraints of the database itself, so they hold whatever writes (concurrent
requests, another process, a restarted server): one label per (task, annotator), and at most
`needed` labels per task. The second is portable SQL without triggers: each label takes a `slot`
in [0, needed) of its task, unique per task, with `needed` copied into the label and tied to the
task's by a composite foreign key, so the CHECK on the slot can see it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from batray.errors import BatrayError

# Execution option that marks a read-only session (plain deferred BEGIN on SQLite).
READ_ONLY = "batray_read_only"


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, so every timestamp in the database is UTC by convention."""
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so one SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Base(DeclarativeBase):
    pass


class User(Base):
    """An annotator (or admin). Only the hash of the token is stored; the token is printed once."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BrowserSession(Base):
    """A browser login: the cookie holds a random session key; only its hash is stored."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    """One pair (prompt, response A, response B) with its display order fixed once at import.

    `left_is_a` records the randomized order so export can map left/right back to a/b; `needed` is
    how many annotators label it (2 for the overlap share, used for agreement; else 1).
    """

    __tablename__ = "tasks"
    # the target of the labels' (task_id, needed) foreign key; `id` alone is already unique
    __table_args__ = (UniqueConstraint("id", "needed", name="task_id_needed"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_id: Mapped[str] = mapped_column(String(200), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_b: Mapped[str | None] = mapped_column(Text, nullable=True)
    left_is_a: Mapped[bool] = mapped_column(Boolean)
    needed: Mapped[int] = mapped_column(Integer, default=1)


class Assignment(Base):
    """A task handed to an annotator by /api/next: a lease others respect, the resume point, skips."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "user_id", name="one_assignment_per_annotator"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)


class Label(Base):
    """One annotator's answer for one task, in display terms (left/right).

    Unique per (task, annotator); `slot` in [0, needed) unique per task caps the task's labels at
    `needed` (see the module doc). `admin_override`: an admin labeled a task not handed to them.
    """

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id", name="one_label_per_annotator"),
        UniqueConstraint("task_id", "slot", name="one_label_per_slot"),
        ForeignKeyConstraint(["task_id", "needed"], ["tasks.id", "tasks.needed"], name="label_needed_is_the_tasks"),
        CheckConstraint("slot >= 0 AND slot < needed", name="at_most_needed_labels"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(Integer, index=True)  # references tasks through (task_id, needed)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    needed: Mapped[int] = mapped_column(Integer)  # the task's `needed` (the foreign key keeps them equal)
    slot: Mapped[int] = mapped_column(Integer)
    admin_override: Mapped[bool] = mapped_column(Boolean, default=False)
    acceptable_left: Mapped[bool] = mapped_column(Boolean)
    acceptable_right: Mapped[bool] = mapped_column(Boolean)
    helpfulness: Mapped[str] = mapped_column(String(20))  # left_better|right_better|both_good|both_bad
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def default_sqlite_url(folder: str) -> str:
    if "://" in folder:
        raise BatrayError(f"run_dir {folder!r} is remote; pass --db with a database URL (e.g. postgresql://...)")
    return f"sqlite:///{Path(folder).absolute() / 'annotate.db'}"


def open_db(url: str, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for `url` with the tables created. SQLite gets WAL, full sync and BEGIN IMMEDIATE writes."""
    is_sqlite = url.startswith("sqlite")
    connect_args = {"timeout": busy_timeout_s, "check_same_thread": False} if is_sqlite else {}
    if is_sqlite and "/:memory:" not in url and url != "sqlite://":
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    # one shared connection for an in-memory database (each new connection would be a new, empty one)
    pool = {"poolclass": StaticPool} if in_memory else {"pool_size": 20, "max_overflow": 20, "pool_pre_ping": not is_sqlite}
    try:
        engine = create_engine(url, connect_args=connect_args, **pool)
    except (ArgumentError, ImportError, ValueError) as e:  # bad URL or missing driver
        raise BatrayError(f"database URL {url!r} cannot be opened: {e}") from None

    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a 201 means the label is on disk
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # A deferred transaction that reads then writes can fail with SQLITE_BUSY without waiting
            # (lock upgrade); IMMEDIATE takes the write lock up front and waits its turn instead.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    try:
        _migrate_labels(engine)
        Base.metadata.create_all(engine)
    except OperationalError as e:
        raise BatrayError(f"database {url!r}: {e.orig}") from None
    return engine


_LABEL_COLUMNS = "id, task_id, user_id, acceptable_left, acceptable_right, helpfulness, comment, created_at"


def _migrate_labels(engine: Engine) -> None:
    """Give a database made before the label constraints its `slot`/`needed` columns, losing nothing.

    A task that already holds more labels than it needed keeps them all: its `needed` rises to
    its label count (logged) before the labels are copied into the constrained table.
    """
    insp = inspect(engine)
    if "labels" not in insp.get_table_names() or "slot" in {c["name"] for c in insp.get_columns("labels")}:
        return
    import logging

    log = logging.getLogger(__name__)
    count = "(SELECT count(*) FROM labels_v1 l WHERE l.task_id = tasks.id)"
    # read the old layout first: the inspector's own connection would wait on the transaction below
    indexes = [index["name"] for index in insp.get_indexes("labels")]
    has_task_key = any(u["column_names"] == ["id", "needed"] for u in insp.get_unique_constraints("tasks"))
    with engine.begin() as conn:
        for name in indexes:  # the new table's indexes reuse the names
            conn.execute(text(f'DROP INDEX "{name}"'))
        conn.execute(text("ALTER TABLE labels RENAME TO labels_v1"))
        raised = conn.execute(text(f"UPDATE tasks SET needed = {count} WHERE needed < {count}")).rowcount
        if raised:
            log.warning("%d tasks held more labels than they needed (before the constraint); their needed count "
                        "was raised to keep every label", raised)
        if not has_task_key:
            conn.execute(text("CREATE UNIQUE INDEX task_id_needed ON tasks (id, needed)"))
        Label.__table__.create(conn)
        conn.execute(text(
            f"INSERT INTO labels ({_LABEL_COLUMNS}, needed, slot, admin_override) "
            f"SELECT {', '.join('l.' + c.strip() for c in _LABEL_COLUMNS.split(','))}, t.needed, "
            "ROW_NUMBER() OVER (PARTITION BY l.task_id ORDER BY l.id) - 1, false "
            "FROM labels_v1 l JOIN tasks t ON t.id = l.task_id"))
        moved = conn.execute(text("SELECT count(*) FROM labels")).scalar_one()
        conn.execute(text("DROP TABLE labels_v1"))
    log.info("labels table migrated to the per-task slot constraint (%d labels kept)", moved)


class Database:
    """The engine plus session factories: `write()` for one transaction that changes data, `read()` for queries."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_db(url)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    def write(self) -> Session:
        return self._write()

    def read(self) -> Session:
        return self._read()

    def close(self) -> None:
        self.engine.dispose()


def add_user(db: Database, name: str, admin: bool = False, rotate: bool = False) -> str:
    """Create annotator `name` (or give an existing one a new token with rotate) and return the token."""
    name = name.strip()
    if not name or len(name) > 100:
        raise BatrayError("user name must be 1-100 characters")
    token = new_token()
    with db.write() as s, s.begin():
        user = s.scalar(select(User).where(User.name == name))
        if user is not None and not rotate:
            raise BatrayError(f"user {name!r} exists; use --rotate to issue a new token (the old one stops working)")
        if user is None:
            s.add(User(name=name, token_hash=hash_token(token), is_admin=admin))
        else:
            user.token_hash = hash_token(token)
            user.is_admin = user.is_admin or admin
            s.query(BrowserSession).filter(BrowserSession.user_id == user.id).delete()
    return token
