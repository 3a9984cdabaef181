"""What a phase's `observe` gets: the object as read at the start of the pass, and the reads every phase shares
(a step's Job, the login from the credentials Secret). The only I/O in the machine package is in the phases'
`observe` functions, through these helpers and the I/O modules; `decide` functions never do I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from .. import jobs, kube
from ..database import Credentials
from ..models import DatabaseMigrationSpec, DatabaseMigrationStatus, Phase
from ..observations import JobObservation
from ..reasons import ARMED, Step
from .core import Run

Logger = logging.Logger | logging.LoggerAdapter[Any]
CREDENTIALS_RETRY = 15


@dataclass
class Context:
    body: dict[str, Any]
    spec: DatabaseMigrationSpec
    status: DatabaseMigrationStatus
    logger: Logger
    # The credentials Secret as read in this pass (read once per pass: by the scrubber and the phase).
    _secret: kube.SecretRead | None = field(default=None, repr=False)
    _secret_read: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid", ""))

    @property
    def run(self) -> Run:
        return Run(self.name, self.uid)

    @property
    def generation(self) -> int | None:
        value = self.body["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def phase(self) -> Phase:
        return Phase(self.status.phase) if self.status.phase else Phase.PENDING

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("annotations") or {})


async def job(ctx: Context, step: Step, *, read_log: bool = True) -> dict[str, JobObservation]:
    """{step: what its Job is doing}, for `Observations.jobs` (`read_log=False`: the state only, not its output)."""
    return {step: await jobs.observe(ctx.namespace, job_name(ctx, step), read_log=read_log)}


async def job_or_armed(ctx: Context, step: Step) -> dict[str, JobObservation]:
    """`job` of `step`, and, while the step has no Job yet, of its pre-started Job (maintenance.prestartMigration)
    too: the phase adopts it or replaces it (machine/prestart.py)."""
    found = await job(ctx, step)
    armed = ARMED.get(step)
    if armed is not None and step not in ctx.status.jobs and armed in ctx.status.jobs:
        found.update(await job(ctx, armed, read_log=False))
    return found


def job_name(ctx: Context, step: Step) -> str:
    """The name of the step's Job: as status.jobs records it (the migrate step may be the pre-started migrate Job),
    else the deterministic `<run>-<step>`."""
    return ctx.status.jobs.get(step) or jobs.job_name(ctx.name, step)


async def credentials_secret(ctx: Context) -> kube.SecretRead | None:
    """database.credentialsSecret (its opt-in and the login's two values), read once per pass; None when it does not
    exist."""
    if not ctx._secret_read:
        secret = ctx.spec.database.credentials_secret
        ctx._secret = await kube.read_secret(ctx.namespace, secret.name, [secret.username_key, secret.password_key])
        ctx._secret_read = True
    return ctx._secret


async def secret_values(ctx: Context) -> dict[str, str] | None:
    """The login's values ({key: value} of the two keys); None when the Secret does not exist."""
    found = await credentials_secret(ctx)
    return None if found is None else found.values


async def check_secret(ctx: Context) -> kube.SecretRead | None:
    """verify.credentialsSecret (None: not set, or the Secret does not exist)."""
    ref = ctx.spec.verify.credentials_secret
    if ref is None:
        return None
    return await kube.read_secret(ctx.namespace, ref.name, [ref.username_key, ref.password_key])


async def check_secret_values(ctx: Context) -> dict[str, str] | None:
    found = await check_secret(ctx)
    return None if found is None else found.values


async def check_credentials(ctx: Context) -> Credentials | None:
    """The checks' own login (`verify.credentialsSecret`), None when the checks use the migration role's; a retry
    later when that Secret cannot be read."""
    ref = ctx.spec.verify.credentials_secret
    if ref is None:
        return None
    values = await check_secret_values(ctx) or {}
    if ref.username_key not in values or ref.password_key not in values:
        raise kopf.TemporaryError(f"checks credentials Secret {ref.name} unreadable", delay=CREDENTIALS_RETRY)
    return Credentials(values[ref.username_key], values[ref.password_key], await ca_certificate(ctx))


async def values_to_scrub(ctx: Context) -> list[str]:
    """Every secret value this run may meet (the login of the credentials Secret and of the checks' Secret), for
    `errors.remember`: best effort, a Secret that cannot be read has nothing to scrub."""
    found: list[str] = []
    for read in (secret_values, check_secret_values):
        try:
            found += list((await read(ctx) or {}).values())
        except Exception as error:  # the scrubber must never stop a pass; the phase reports the Secret itself
            ctx.logger.debug("a Secret unreadable for the scrubber: %s", type(error).__name__)
    return found


def login(ctx: Context, values: dict[str, str] | None, ca_certificate: str | None = None) -> Credentials | None:
    secret = ctx.spec.database.credentials_secret
    if not values or secret.username_key not in values or secret.password_key not in values:
        return None
    return Credentials(values[secret.username_key], values[secret.password_key], ca_certificate)


async def ca_certificate(ctx: Context) -> str | None:
    """The PEM of database.caSecret (None: no caSecret, or the Secret or its key is missing)."""
    ca = ctx.spec.database.ca_secret
    if ca is None:
        return None
    values = await kube.read_secret_values(ctx.namespace, ca.name, [ca.key])
    return (values or {}).get(ca.key) or None


async def credentials(ctx: Context) -> Credentials:
    """The login (with the CA to verify the server by, when there is one), or a retry later when a Secret cannot be
    read."""
    ca = await ca_certificate(ctx)
    if ctx.spec.database.ca_secret is not None and ca is None:
        raise kopf.TemporaryError(f"CA Secret {ctx.spec.database.ca_secret.name} unreadable", delay=CREDENTIALS_RETRY)
    found = login(ctx, await secret_values(ctx), ca)
    if found is None:
        raise kopf.TemporaryError(
            f"credentials Secret {ctx.spec.database.credentials_secret.name} unreadable", delay=CREDENTIALS_RETRY
        )
    return found
