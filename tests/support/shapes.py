"""Databases shaped like real ones, generated from features rather than hand-written one test each.

A Shape is a base (an empty database, a plain app database, the parking sample) plus features (another role's
table, `public` owned by the migration role, another app's schema, an extension in its own schema or in `public`,
mixed-case and odd names, many kinds of objects, a large table, grants and default privileges, a database the
migration role does not own), restored either as a whole database or scoped to the app's schemas
(DUMP_SCHEMAS). Each feature says what it builds (as the superuser or as the migration role), what the failed
migration does to it on top of the generic one, which schemas must keep even their OIDs, and what the outcome
must be in each scope: restored, restore refused before it changes anything, or backup refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Scope = Literal["whole", "scoped"]
Outcome = Literal["restored", "restore_refused", "backup_refused"]
# (who runs it, SQL): "admin" = the superuser, "app" = the migration role
Step = tuple[Literal["admin", "app"], str]

LARGE_ROWS = int(os.environ.get("MO_DB_LARGE_ROWS", "300000"))
NEW_SCHEMA = "mo_failed_new"


@dataclass(frozen=True)
class Roles:
    """The roles of one test (unique names): the migration role, another app's role, a reader, a DBA."""

    app: str
    password: str
    other: str
    reader: str
    admin: str

    def all(self) -> list[str]:
        return [self.app, self.other, self.reader, self.admin]


@dataclass(frozen=True)
class OldTable:
    """A table that exists before the run, that the generic failed migration alters."""

    schema: str
    name: str
    key: str
    key_type: str
    dml: str  # a DELETE/UPDATE that changes rows and is allowed by the table's constraints

    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"


@dataclass(frozen=True)
class Feature:
    name: str
    setup: Callable[[Roles], list[Step]] = lambda r: []
    migration: Callable[[Roles, Scope], list[str]] = lambda r, s: []
    app_schemas: tuple[str, ...] = ()  # schemas the app migrates, besides public
    untouched_schemas: tuple[str, ...] = ()  # must keep their OIDs
    old_tables: tuple[OldTable, ...] = ()
    droppable: str | None = None  # a table the failed migration drops
    outcome: Callable[[Scope], Outcome] = lambda s: "restored"
    message: Callable[[Scope], str] = lambda s: ""  # what the refusal/failure must say
    db_owner_is_app: bool = True


@dataclass(frozen=True)
class Shape:
    base: str  # "empty", "plain", "parking"
    features: tuple[Feature, ...]
    scope: Scope
    id: str = field(default="")

    @property
    def name(self) -> str:
        return self.id or "+".join([self.base, *(f.name for f in self.features)]) + f"-{self.scope}"

    @property
    def parking(self) -> bool:
        return self.base == "parking"

    @property
    def db_owner_is_app(self) -> bool:
        return all(f.db_owner_is_app for f in self.features)

    def outcome(self) -> Outcome:
        outcomes = [f.outcome(self.scope) for f in self.features]
        if "backup_refused" in outcomes:
            return "backup_refused"
        if "restore_refused" in outcomes:
            return "restore_refused"
        return "restored"

    def message(self) -> str:
        return next((f.message(self.scope) for f in self.features if f.outcome(self.scope) == self.outcome()), "")

    def app_schemas(self) -> list[str]:
        schemas = ["public"]
        for feature in self.features:
            schemas += [s for s in feature.app_schemas if s not in schemas]
        return schemas

    def untouched_schemas(self) -> list[str]:
        return [s for f in self.features for s in f.untouched_schemas]

    def dump_schemas(self) -> str | None:
        """DUMP_SCHEMAS: the app's schemas when scoped (space-separated), None for the whole database."""
        return " ".join(self.app_schemas()) if self.scope == "scoped" else None

    def old_tables(self) -> list[OldTable]:
        tables = [t for f in self.features for t in f.old_tables]
        if self.base == "plain":
            tables.insert(0, ACCOUNTS)
        if self.base == "parking":
            tables.insert(0, OldTable("public", "tickets", "id", "bigint", "DELETE FROM tickets WHERE id % 3 = 0"))
            tables.append(OldTable("public", "clients", "id", "bigint", "UPDATE clients SET name = name || '!'"))
        return tables

    def setup(self, roles: Roles) -> list[Step]:
        steps: list[Step] = []
        if self.base == "plain":
            steps += plain_setup(roles)
        for feature in self.features:
            steps += feature.setup(roles)
        return steps

    def failed_migration(self, roles: Roles) -> list[str]:
        """What a failed run leaves (each statement committed, as Flyway commits each migration): a new schema,
        a new table with a foreign key onto an old table, a new column, changed rows, a dropped table, sequences
        moved on; then each feature's own changes."""
        statements = [
            f"CREATE SCHEMA {NEW_SCHEMA}",
            f"CREATE TABLE {NEW_SCHEMA}.leftover (id int PRIMARY KEY)",
            f"INSERT INTO {NEW_SCHEMA}.leftover SELECT generate_series(1, 5)",
        ]
        old = self.old_tables()
        for table in old:
            statements += [f"ALTER TABLE {table.qualified()} ADD COLUMN mo_added int NOT NULL DEFAULT 7", table.dml]
        if old:
            first = old[0]
            statements += [
                f"CREATE TABLE public.mo_new (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                f"old_id {first.key_type} REFERENCES {first.qualified()} ({quote(first.key)}), note text)",
                f"INSERT INTO public.mo_new (old_id, note) SELECT {quote(first.key)}, 'new' "
                f"FROM {first.qualified()} ORDER BY 1 LIMIT 3",
            ]
        else:
            statements += [
                "CREATE TABLE public.mo_new (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)",
                "INSERT INTO public.mo_new (note) VALUES ('first'), ('second')",
            ]
        for feature in self.features:
            if feature.droppable:
                statements.append(f"DROP TABLE {feature.droppable}")
        if self.base == "plain":
            statements.append("DROP TABLE public.legacy")
        for feature in self.features:
            statements += feature.migration(roles, self.scope)
        return statements


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


ACCOUNTS = OldTable(
    "public", "accounts", "id", "bigint", "DELETE FROM public.accounts WHERE id % 3 = 0; "
    "UPDATE public.accounts SET balance = balance + 1"
)


def plain_setup(r: Roles) -> list[Step]:
    return [
        (
            "app",
            """CREATE TABLE public.accounts (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 name text NOT NULL,
                 balance numeric(12, 2) NOT NULL DEFAULT 0,
                 name_upper text GENERATED ALWAYS AS (upper(name)) STORED);
               INSERT INTO public.accounts (name, balance)
                 SELECT 'account ' || i, i * 1.5 FROM generate_series(1, 100) i;
               CREATE TABLE public.legacy (id int PRIMARY KEY, data jsonb);
               INSERT INTO public.legacy SELECT i, jsonb_build_object('i', i) FROM generate_series(1, 10) i;""",
        )
    ]


def _other_owner_setup(member: bool, create: bool = True) -> Callable[[Roles], list[Step]]:
    def setup(r: Roles) -> list[Step]:
        steps: list[Step] = [
            (
                "admin",
                f"""CREATE TABLE public.audit_log (id int PRIMARY KEY, what text);
                    INSERT INTO public.audit_log SELECT i, 'event ' || i FROM generate_series(1, 20) i;
                    ALTER TABLE public.audit_log OWNER TO {r.other};
                    GRANT SELECT ON public.audit_log TO {r.app};""",
            )
        ]
        if create:
            steps.append(("admin", f"GRANT CREATE ON SCHEMA public TO {r.other}"))
        if member:
            steps.append(("admin", f"GRANT {r.other} TO {r.app}"))
        return steps

    return setup


def _other_app_schema(readable: bool) -> Callable[[Roles], list[Step]]:
    def setup(r: Roles) -> list[Step]:
        grants = (
            f"GRANT USAGE ON SCHEMA billing TO {r.app}; GRANT SELECT ON ALL TABLES IN SCHEMA billing TO {r.app};"
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA billing TO {r.app};"
            if readable
            else ""
        )
        return [
            (
                "admin",
                f"""CREATE SCHEMA billing AUTHORIZATION {r.other};
                    SET ROLE {r.other};
                    CREATE TABLE billing.invoices (id serial PRIMARY KEY, amount numeric, at date);
                    INSERT INTO billing.invoices (amount, at)
                      SELECT i * 10, date '2024-01-01' + i FROM generate_series(1, 30) i;
                    CREATE VIEW billing.totals AS SELECT sum(amount) AS total FROM billing.invoices;
                    RESET ROLE;
                    {grants}""",
            )
        ]

    return setup


def _other_app_depends_on_app(r: Roles) -> list[Step]:
    """Another app's schema holds a view of the app's table: dropping the table would drop it."""
    return [
        ("app", f"GRANT SELECT ON public.accounts TO {r.other}"),
        (
            "admin",
            f"""CREATE SCHEMA reports AUTHORIZATION {r.other};
                GRANT USAGE ON SCHEMA reports TO {r.app};
                SET ROLE {r.other};
                CREATE VIEW reports.accounts_view AS SELECT id, name FROM public.accounts;
                GRANT SELECT ON reports.accounts_view TO {r.app};
                RESET ROLE;""",
        ),
    ]


def _extension_schema_setup(r: Roles) -> list[Step]:
    return [
        (
            "admin",
            f"""CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext; GRANT USAGE ON SCHEMA ext TO {r.app};""",
        ),
        (
            "app",
            """CREATE TABLE public.emails (id int PRIMARY KEY, address ext.citext UNIQUE);
               INSERT INTO public.emails VALUES (1, 'A@Example.com'), (2, 'b@example.COM');""",
        ),
    ]


def _extension_in_public_setup(r: Roles) -> list[Step]:
    return [
        ("admin", "CREATE EXTENSION pgcrypto"),
        (
            "app",
            """CREATE TABLE public.secrets (
                 id int PRIMARY KEY, plain text NOT NULL,
                 sha text GENERATED ALWAYS AS (encode(public.digest(plain, 'sha256'), 'hex')) STORED);
               INSERT INTO public.secrets (id, plain) SELECT i, 'secret ' || i FROM generate_series(1, 10) i;""",
        ),
    ]


ODD_SCHEMA = 'Odd."Na\\me'


def _mixed_case_setup(r: Roles) -> list[Step]:
    odd = quote(ODD_SCHEMA)
    return [
        (
            "app",
            f"""CREATE SCHEMA "Sales";
                CREATE TYPE "Sales"."OrderStatus" AS ENUM ('New', 'Paid', 'Shipped');
                CREATE TABLE "Sales"."Orders" (
                  "OrderId" int PRIMARY KEY, "Amount" numeric NOT NULL,
                  "Status" "Sales"."OrderStatus" NOT NULL DEFAULT 'New',
                  "AmountWithTax" numeric GENERATED ALWAYS AS ("Amount" * 1.2) STORED);
                INSERT INTO "Sales"."Orders" ("OrderId", "Amount", "Status")
                  SELECT i, i * 3, (ARRAY['New', 'Paid', 'Shipped'])[1 + i % 3]::"Sales"."OrderStatus"
                  FROM generate_series(1, 25) i;
                CREATE TABLE public."MixedCase" ("Id" int PRIMARY KEY, "Value" text);
                INSERT INTO public."MixedCase" VALUES (1, 'one'), (2, 'two');
                CREATE SCHEMA {odd};
                COMMENT ON SCHEMA {odd} IS 'odd';
                GRANT USAGE ON SCHEMA {odd} TO {r.reader};
                CREATE TABLE {odd}."T.1" (id int PRIMARY KEY, "Quote""d" text);
                INSERT INTO {odd}."T.1" VALUES (1, 'x');""",
        )
    ]


def _mixed_case_migration(r: Roles, scope: Scope) -> list[str]:
    return [
        """ALTER TYPE "Sales"."OrderStatus" ADD VALUE 'Refunded'""",
        """INSERT INTO "Sales"."Orders" ("OrderId", "Amount") VALUES (1000, 1)""",
        f"DROP SCHEMA {quote(ODD_SCHEMA)} CASCADE",  # the restore must create it back, with its grant
    ]


def _rich_setup(r: Roles) -> list[Step]:
    return [
        (
            "app",
            """CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
               CREATE DOMAIN public.posint AS int CHECK (VALUE > 0);
               CREATE TYPE public.pair AS (a int, b text);
               CREATE SEQUENCE public.invoice_no START 1000 INCREMENT 10;
               SELECT setval('public.invoice_no', 1230);
               CREATE TABLE public.people (
                 id serial PRIMARY KEY,
                 ext_id bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 500) UNIQUE,
                 first text NOT NULL, last text NOT NULL,
                 full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED,
                 mood public.mood NOT NULL DEFAULT 'ok',
                 age public.posint,
                 extra public.pair,
                 invoice bigint DEFAULT nextval('public.invoice_no'),
                 CONSTRAINT people_name_ck CHECK (first <> last));
               CREATE INDEX people_lower_last ON public.people (lower(last));
               CREATE STATISTICS public.people_stats (dependencies) ON first, last FROM public.people;
               COMMENT ON TABLE public.people IS 'the people';
               COMMENT ON COLUMN public.people.mood IS 'how they feel';
               INSERT INTO public.people (first, last, mood, age, extra)
                 SELECT 'f' || i, 'l' || i, (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::public.mood, i,
                        ROW(i, 'p')::public.pair
                 FROM generate_series(1, 50) i;
               CREATE FUNCTION public.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
               CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS
                 $$BEGIN NEW.last := NEW.last; RETURN NEW; END$$;
               CREATE TRIGGER people_touch BEFORE UPDATE ON public.people
                 FOR EACH ROW EXECUTE FUNCTION public.touch();
               CREATE AGGREGATE public.concat_all (text) (SFUNC = textcat, STYPE = text, INITCOND = '');
               CREATE VIEW public.happy_people AS SELECT id, full_name FROM public.people WHERE mood = 'happy';
               CREATE MATERIALIZED VIEW public.mood_counts AS SELECT mood, count(*) FROM public.people GROUP BY 1;
               CREATE TABLE public.measures (at date NOT NULL, v int) PARTITION BY RANGE (at);
               CREATE TABLE public.measures_2024 PARTITION OF public.measures
                 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE public.measures_2025 PARTITION OF public.measures
                 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
               INSERT INTO public.measures SELECT date '2024-06-01' + i * 3, i FROM generate_series(1, 100) i;
               ALTER TABLE public.people ENABLE ROW LEVEL SECURITY;
               CREATE POLICY people_happy ON public.people USING (mood <> 'sad');""",
        )
    ]


def _rich_migration(r: Roles, scope: Scope) -> list[str]:
    return [
        "ALTER TYPE public.mood ADD VALUE 'angry'",
        "SELECT nextval('public.invoice_no') FROM generate_series(1, 5)",
        "INSERT INTO public.people (first, last) VALUES ('new', 'person')",
        "UPDATE public.people SET last = last || 'x' WHERE id < 5",
        "CREATE OR REPLACE FUNCTION public.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a - b'",
        "DROP VIEW public.happy_people",
        "REFRESH MATERIALIZED VIEW public.mood_counts",
        "ALTER TABLE public.measures DETACH PARTITION public.measures_2025",
        "DROP POLICY people_happy ON public.people",
        "CREATE INDEX people_first ON public.people (first)",
        "COMMENT ON TABLE public.people IS 'changed'",
    ]


def _large_setup(r: Roles) -> list[Step]:
    return [
        (
            "app",
            f"""CREATE TABLE public.events (
                  id bigint PRIMARY KEY, at timestamptz NOT NULL, kind text NOT NULL, payload text,
                  size int GENERATED ALWAYS AS (length(payload)) STORED);
                INSERT INTO public.events (id, at, kind, payload)
                  SELECT i, timestamptz '2024-01-01' + i * interval '1 minute', 'kind' || (i % 7),
                         md5(i::text) || repeat('x', i % 50)
                  FROM generate_series(1, {LARGE_ROWS}) i;
                CREATE INDEX events_at ON public.events (at);""",
        )
    ]


def _grants_setup(r: Roles) -> list[Step]:
    return [
        (
            "app",
            f"""GRANT USAGE ON SCHEMA public TO {r.reader};
                CREATE TABLE public.before_defaults (id int PRIMARY KEY, name text, secret text);
                GRANT SELECT (id, name) ON public.before_defaults TO {r.reader};
                ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {r.reader};
                ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT ON SEQUENCES TO {r.reader};
                ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
                ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT ON TABLES TO {r.reader};
                CREATE TABLE public.after_defaults (id serial PRIMARY KEY, v text);
                CREATE TABLE public.revoked (id int PRIMARY KEY);
                REVOKE ALL ON public.revoked FROM {r.reader};
                CREATE FUNCTION public.secret_fn() RETURNS int LANGUAGE sql AS 'SELECT 42';
                GRANT EXECUTE ON FUNCTION public.secret_fn() TO {r.reader};
                INSERT INTO public.before_defaults VALUES (1, 'a', 's'), (2, 'b', 't');
                INSERT INTO public.after_defaults (v) VALUES ('x'), ('y');""",
        )
    ]


def _grants_migration(r: Roles, scope: Scope) -> list[str]:
    statements = [
        f"GRANT CREATE ON SCHEMA public TO {r.reader}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT UPDATE ON TABLES TO {r.reader}",
        f"GRANT DELETE ON public.before_defaults TO {r.reader}",
        "COMMENT ON SCHEMA public IS 'changed by the failed migration'",
        f"REVOKE SELECT ON public.after_defaults FROM {r.reader}",
    ]
    if scope == "whole":
        # database-wide: only a whole-database restore puts the role's global default privileges back
        statements.append(f"ALTER DEFAULT PRIVILEGES GRANT TRUNCATE ON TABLES TO {r.reader}")
    return statements


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in [
        Feature(
            "other_owner",
            setup=_other_owner_setup(member=False),
            outcome=lambda s: "restore_refused",
            message=lambda s: "public.audit_log is owned by",
        ),
        Feature("other_owner_member", setup=_other_owner_setup(member=True)),
        Feature(
            "other_owner_member_without_create",
            setup=_other_owner_setup(member=True, create=False),
            outcome=lambda s: "restore_refused",
            message=lambda s: "which lacks CREATE on schema public",
        ),
        Feature(
            "public_owned_by_app",
            setup=lambda r: [("admin", f"ALTER SCHEMA public OWNER TO {r.app}")],
        ),
        Feature(
            "other_app_schema",
            setup=_other_app_schema(readable=False),
            untouched_schemas=("billing",),
            outcome=lambda s: "backup_refused" if s == "whole" else "restored",
            message=lambda s: "permission denied for schema billing",
        ),
        Feature(
            "other_app_schema_readable",
            setup=_other_app_schema(readable=True),
            untouched_schemas=("billing",),
            outcome=lambda s: "restore_refused" if s == "whole" else "restored",
            message=lambda s: "billing.invoices is owned by",
        ),
        Feature(
            "other_app_depends_on_app",
            setup=_other_app_depends_on_app,
            untouched_schemas=("reports",),
            outcome=lambda s: "restore_refused",
            message=lambda s: (
                "reports.accounts_view is owned by" if s == "whole" else "depends on table public.accounts"
            ),
        ),
        Feature(
            "publication",
            setup=lambda r: [
                ("admin", f"CREATE PUBLICATION mo_cdc FOR TABLE public.accounts; "
                          f"ALTER PUBLICATION mo_cdc OWNER TO {r.app}")
            ],
            outcome=lambda s: "restored" if s == "whole" else "restore_refused",
            message=lambda s: "public.accounts in publication mo_cdc depends on table public.accounts",
        ),
        Feature(
            "publication_of_another_role",
            setup=lambda r: [("admin", "CREATE PUBLICATION mo_cdc FOR TABLE public.accounts")],
            outcome=lambda s: "restore_refused",
            message=lambda s: "public.accounts in publication mo_cdc depends on table public.accounts",
        ),
        Feature("extension_schema", setup=_extension_schema_setup, untouched_schemas=("ext",)),
        Feature("extension_in_public", setup=_extension_in_public_setup),
        Feature(
            "mixed_case",
            setup=_mixed_case_setup,
            migration=_mixed_case_migration,
            app_schemas=("Sales", ODD_SCHEMA),
            old_tables=(
                OldTable("Sales", "Orders", "OrderId", "int", """DELETE FROM "Sales"."Orders" WHERE "OrderId" < 5"""),
            ),
        ),
        Feature("rich_types", setup=_rich_setup, migration=_rich_migration),
        Feature(
            "large_table",
            setup=_large_setup,
            old_tables=(
                OldTable("public", "events", "id", "bigint", "DELETE FROM public.events WHERE id % 100 = 0"),
            ),
        ),
        Feature("grants", setup=_grants_setup, migration=_grants_migration),
        Feature("db_owned_by_admin", db_owner_is_app=False),
    ]
}

KITCHEN_SINK = (
    "other_owner_member",
    "public_owned_by_app",
    "extension_schema",
    "extension_in_public",
    "mixed_case",
    "rich_types",
    "grants",
)


def shapes() -> list[Shape]:
    """Every shape the restore tests run, both scopes each: the empty database, the parking sample, each feature
    alone on the plain app database, and all the compatible ones together."""
    generated: list[Shape] = []
    for scope in ("whole", "scoped"):
        generated.append(Shape("empty", (), scope))
        generated.append(Shape("parking", (), scope))
        for name, feature in FEATURES.items():
            if name == "large_table" and scope == "scoped":
                continue  # the same code path as whole, twice the time
            generated.append(Shape("plain", (feature,), scope))
        generated.append(Shape("plain", tuple(FEATURES[n] for n in KITCHEN_SINK), scope, id=f"kitchen_sink-{scope}"))
    return generated
