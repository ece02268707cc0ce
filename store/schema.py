"""The database schema, in SQLAlchemy Core. Alembic migrations (store/migrations) create it.

One schema for SQLite and PostgreSQL: types are chosen so that both engines store the same values
(timestamps always UTC-aware, JSON as text on SQLite and ``json`` on PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware, on both engines."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only aliases INTEGER PRIMARY KEY to the rowid; BIGINT would not autoincrement there.
Id = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

domains = Table(
    "domains",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(253), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

bals = Table(
    "bals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False, unique=True),
    Column("domain_id", Id, ForeignKey("domains.id"), nullable=False),
    Column("type", String(3), nullable=False),
    Column("national_id", String(64)),
    Column("display_name", String(256), nullable=False),
    Column("profession", String(128)),
    Column("description", Text),
    Column("liste_rouge", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("placement", String(2), nullable=False),
    # Directory attributes (mssante-spec §5.1): the service a BAL belongs to (ORG/APP), its rank
    # among the BALs of one holder (1 = preferred), and where it is, for search.
    Column("service", Text),
    Column("rank", Integer, nullable=False, server_default="1"),
    Column("city", String(128)),
    Column("postal_code", String(16)),
    Column("departement", String(3)),
    # store.text.search_key of display name, description and service: accent- and case-free.
    Column("name_key", Text, nullable=False, server_default=""),
    # Incremented by every change; the directory publisher publishes revisions, not rows.
    Column("revision", BigInteger, nullable=False, server_default="1"),
    # The highest UIDVALIDITY given to any folder of this BAL, deleted ones included.
    Column("last_uidvalidity", BigInteger, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "national_id"),
    Index(None, "domain_id"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("bal_id", Id, ForeignKey("bals.id", ondelete="CASCADE"), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

delegations = Table(
    "delegations",
    metadata,
    Column("bal_id", Id, ForeignKey("bals.id", ondelete="CASCADE"), nullable=False),
    Column("delegate_id", Id, ForeignKey("bals.id", ondelete="CASCADE"), nullable=False),
    Column("can_read", Boolean, nullable=False),
    Column("can_write", Boolean, nullable=False),
    Column("can_send", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("bal_id", "delegate_id"),
    Index(None, "delegate_id"),
)

folders = Table(
    "folders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("bal_id", Id, ForeignKey("bals.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(1024), nullable=False),
    Column("special_use", String(16)),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid_next", BigInteger, nullable=False),
    Column("highest_modseq", BigInteger, nullable=False),
    Column("subscribed", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("bal_id", "name"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("folder_id", Id, ForeignKey("folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Column("internal_date", UTCDateTime, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("blob", String(64), nullable=False),
    Column("flags", Integer, nullable=False),
    Column("keywords", JSON, nullable=False),
    # Metadata computed once at delivery (store.mime) so that reading never re-parses MIME.
    Column("envelope", JSON, nullable=False),
    Column("body", JSON, nullable=False),
    Column("header", LargeBinary, nullable=False),
    Column("subject", Text),
    Column("message_id", Text),
    Column("sent_date", UTCDateTime),
    Column("from_addr", Text),
    Column("problems", JSON),
    UniqueConstraint("folder_id", "uid"),
    Index(None, "folder_id", "modseq"),
    Index(None, "blob"),
)

# RFC 7162 §3.2.10 (QRESYNC VANISHED): expunged UIDs are remembered with the MODSEQ of the expunge.
expunged = Table(
    "expunged",
    metadata,
    Column("folder_id", Id, ForeignKey("folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    PrimaryKeyConstraint("folder_id", "uid"),
    Index(None, "folder_id", "modseq"),
)

outbound_queue = Table(
    "outbound_queue",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sender_bal", String(320)),
    Column("mail_from", String(320), nullable=False),
    Column("recipients", JSON, nullable=False),
    Column("envid", String(100)),
    Column("ret", String(4)),
    Column("blob", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(128)),
    Column("claimed_until", UTCDateTime),
    Column("last_error", Text),
    # The single "delayed" DSN (RFC 3464 action delayed) was sent: never twice per entry.
    Column("delay_warned", Boolean, nullable=False, server_default=false()),
    Index(None, "status", "next_attempt_at"),
    Index(None, "blob"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(320), nullable=False),
    Column("action", String(64), nullable=False),
    Column("bal", String(320)),
    Column("source", String(128)),
    Column("result", String(32), nullable=False),
    Column("detail", JSON),
    Index(None, "at"),
    Index(None, "bal", "at"),
)

# Prefix searches compare octets: PostgreSQL must not apply a linguistic collation to the keys.
SearchKey = Text().with_variant(Text(collation="C"), "postgresql")

# Named documents a component keeps across restarts and shares between processes (the last good
# whitelist and its HTTP validators).
documents = Table(
    "documents",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("content", LargeBinary),
    Column("meta", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Who runs a singleton job (publisher, whitelist fetcher) among the processes of a cluster.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# Publication of each BAL to the national directory: what revision is wanted and what is there.
directory_publication = Table(
    "directory_publication",
    metadata,
    Column("bal_id", Id, ForeignKey("bals.id", ondelete="CASCADE"), primary_key=True),
    Column("wanted_revision", BigInteger, nullable=False),
    Column("published_revision", BigInteger, nullable=False, server_default="0"),
    Column("pending", Boolean, nullable=False),
    # published | unpublished | pending | error
    Column("state", String(16), nullable=False),
    Column("dn", String(1024)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_attempt_at", UTCDateTime),
    Column("published_at", UTCDateTime),
    Index(None, "pending", "next_attempt_at"),
)

# The national address book: every MSSanté BAL of France, from the ANS open-data extraction
# (mssante-spec §5.4). An import writes a new generation beside the current one, then switches to
# it in one update (the current generation is the latest import whose status is done) and deletes
# the older generations in small transactions; a failed import leaves the current one in place.
address_book_imports = Table(
    "address_book_imports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    # running | done | failed
    Column("status", String(16), nullable=False),
    Column("entries", Integer, nullable=False, server_default="0"),
    Column("bad_lines", Integer, nullable=False, server_default="0"),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    Column("detail", JSON),
)

address_book = Table(
    "address_book",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("generation", Id, nullable=False),
    # Octet order on PostgreSQL too: the address filter is a prefix range.
    Column("address", SearchKey, nullable=False),
    Column("bal_type", String(3), nullable=False),
    Column("person_id", String(64)),
    Column("structure_id", String(64)),
    Column("service", Text),
    Column("civility", String(32)),
    Column("last_name", Text),
    Column("first_name", Text),
    Column("profession_code", String(16)),
    Column("profession", Text),
    Column("specialty", Text),
    Column("organisation", Text),
    # Enseigne commerciale: the name a practice or pharmacy is known by, beside its raison sociale.
    Column("trade_name", Text),
    Column("street", Text),
    Column("city", Text),
    Column("postal_code", String(16)),
    Column("departement", String(3)),
    Column("country", Text),
    Column("dematerialisation", Boolean),
    # store.text.search_key of the fields filtered by prefix. name_key (last name, first name,
    # organisation, trade name, service, in that order) is also the order results come in.
    Column("name_key", SearchKey, nullable=False),
    Column("profession_key", SearchKey, nullable=False),
    Column("city_key", SearchKey, nullable=False),
    UniqueConstraint("generation", "address"),
    # Each filter's index ends with the order of the results: a département is walked in result
    # order, a city prefix is sorted from the index alone; searches name these indexes (SQLite).
    Index("ix_address_book_generation_name_key_address", "generation", "name_key", "address"),
    Index(
        "ix_address_book_generation_city_key_name_key_address",
        "generation",
        "city_key",
        "name_key",
        "address",
    ),
    Index(
        "ix_address_book_generation_departement_name_key_address",
        "generation",
        "departement",
        "name_key",
        "address",
    ),
)

# Every distinct word of an entry's name_key, with the entry and its order key (name_key, address):
# "every query word is the prefix of a word of the name" is then a range scan of this index for
# the rarest word, wherever the word sits in the name ("herriot" finds "Hôpital Édouard-Herriot"),
# and the other words and the order are read from the same index entries; the entry is then the
# one of (generation, address). No foreign key: generations are deleted in bulk, per table.
address_book_words = Table(
    "address_book_words",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("generation", Id, nullable=False),
    Column("word", SearchKey, nullable=False),
    Column("entry", Id, nullable=False),
    Column("name_key", SearchKey, nullable=False),
    Column("address", SearchKey, nullable=False),
    # entry before the order key: an import appends to the index instead of inserting all over
    # it (the order key is there to be read, the page is sorted anyway: a prefix spans words).
    Index(
        "ix_address_book_words_generation_word_entry_name_key_address",
        "generation",
        "word",
        "entry",
        "name_key",
        "address",
    ),
)

# Order in which the port tool copies tables (parents before children).
TABLES_IN_DEPENDENCY_ORDER: tuple[Table, ...] = (
    domains,
    bals,
    credentials,
    delegations,
    folders,
    messages,
    expunged,
    outbound_queue,
    audit,
    documents,
    leases,
    directory_publication,
    address_book_imports,
    address_book,
    address_book_words,
)
