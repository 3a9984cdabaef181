"""`python -m migration_operator`: run the operator (kopf) with the handlers of this package."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from asyncio import sslproto
from typing import Any
from urllib.parse import urlsplit

import aiohttp.web
import kopf

from . import errors, handlers, leader, metrics  # noqa: F401  (importing handlers registers them with kopf)

logger = logging.getLogger("migration_operator")

USAGE_EPILOG = """
environment:
  KUBECONFIG             kubeconfig outside a cluster (in-cluster config is tried first)
  METRICS_PORT           Prometheus port (default 8080; 0 disables); --metrics-port wins
  METRICS_HOST           address the metrics server binds (default 0.0.0.0)
  LOG_FORMAT             plain | full | json (default full); --log-format wins
  POD_NAMESPACE          namespace of the per-database Leases (default: each run's own namespace)
  DBOPS_LOCK_NAMESPACE   overrides POD_NAMESPACE for the Leases
  POD_NAME               with --leader-elect: this replica's identity in the leader Lease (default: host name)
  DBOPS_LEADER_LEASE     with --leader-elect: the leader Lease's name (default migration-operator-leader), in
                         POD_NAMESPACE; DBOPS_LEADER_LEASE_SECONDS (15), DBOPS_LEADER_RENEW_DEADLINE_SECONDS (10),
                         DBOPS_LEADER_RETRY_SECONDS (2) tune it

examples:
  python -m migration_operator --all-namespaces
  python -m migration_operator --namespace parking --liveness http://0.0.0.0:8081/healthz
  python -m migration_operator --all-namespaces --leader-elect   # several replicas, one acting
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m migration_operator",
        description="Run the DatabaseMigration operator (dbops.io/v1alpha1): the production migration "
        "runbook (preflight, backup, maintenance, Flyway migrate, verify, rollback) as a resource.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable; globs allowed)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default 8080)")
    p.add_argument(
        "--liveness",
        default=os.environ.get("LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz"),
        help="kopf liveness endpoint URL, or '' to disable (default %(default)s)",
    )
    p.add_argument(
        "--log-format",
        choices=("plain", "full", "json"),
        default=None,
        help="log format (default: env LOG_FORMAT or full)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="verbose logs")
    p.add_argument("--debug", action="store_true", help="debug logs")
    p.add_argument("--peering", action="store_true", help="use kopf peering (several replicas); default standalone")
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: act only while holding the leader Lease (leader.py), stand by otherwise",
    )
    return p


class StandbyProbe:
    """The liveness endpoint while standing by (kopf serves it only while it runs): 200 with who leads. The kubelet
    must not restart a healthy standby, and a rolling update needs the standby Ready."""

    def __init__(self, url: str, elector: leader.LeaderElector) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "0.0.0.0", parts.port or 80, parts.path or "/"
        self.elector = elector
        self.runner: aiohttp.web.AppRunner | None = None

    async def _health(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"leader": False, "holder": self.elector.holder, "me": self.elector.me})

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get(self.path, self._health)])
        self.runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await aiohttp.web.TCPSite(self.runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _leadership_changed(leading: bool) -> None:
    metrics.LEADER.set(1 if leading else 0)


def _stop_acting_now(reason: BaseException) -> None:
    """Lost the Lease: nothing may run past it, not even kopf's graceful shutdown (it lets handlers finish). Exit at
    once, non-zero: the kubelet restarts the container, which stands by (or takes the Lease back if still free)."""
    logger.error("leader election: leadership lost (%s); exiting so that no step runs past the Lease", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def _on_renewal_ended(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        _stop_acting_now(error)


async def run_elected(operator_kwargs: dict[str, Any], liveness: str | None) -> int:
    """Stand by until this replica holds the leader Lease, then run kopf while renewing it; release it on SIGTERM."""
    elector = leader.LeaderElector(
        leader.lease_namespace(), leader.lease_name(), leader.identity(), leader.Timing.from_env(),
        on_change=_leadership_changed,
    )
    metrics.LEADER.set(0)
    metrics.serve(int(os.environ.get("METRICS_PORT", "8080")))  # the standby's /metrics says 0
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminated.set)
    probe = StandbyProbe(liveness, elector) if liveness else None
    if probe is not None:
        await probe.start()
    try:
        acquired = await elector.acquire(terminated)
    finally:
        if probe is not None:
            await probe.stop()  # kopf serves the endpoint from now on
    if not acquired:
        logger.info("leader election: terminated while standing by")
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):  # kopf's own handlers stop it gracefully from now on
        loop.remove_signal_handler(sig)

    holding = asyncio.create_task(elector.hold(), name="leader lease renewal")
    holding.add_done_callback(_on_renewal_ended)
    try:
        await kopf.operator(**operator_kwargs, liveness_endpoint=liveness)
    finally:
        holding.cancel()
        await asyncio.wait([holding])  # no renewal starts after this (one already on the wire: release reads again)
        await elector.release()  # after kopf stopped: the next leader never overlaps with us
    return 0


# One TLS record carries at most 16 KiB: a read buffer of two is enough for a watch stream or an API reply.
TLS_READ_BUFFER = 32 * 1024


def smaller_tls_read_buffers() -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer, zero-filled, so resident
    (`asyncio.sslproto.SSLProtocol.max_size` in Python 3.11). kopf opens one watch stream per watched namespace and
    resource when it watches namespaces by name or glob: 4 streams per namespace here, ~1.25 MiB each namespace in
    buffers alone (tracemalloc: 20.5 MiB of 56 MiB traced with 20 namespaces). A smaller buffer costs only more reads
    of a large reply; an asyncio without the attribute is left as it is."""
    size = getattr(sslproto.SSLProtocol, "max_size", None)
    if isinstance(size, int) and size > TLS_READ_BUFFER:
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    smaller_tls_read_buffers()
    if args.metrics_port is not None:
        os.environ["METRICS_PORT"] = str(args.metrics_port)
    log_format = (args.log_format or os.environ.get("LOG_FORMAT", "full")).lower()
    kopf.configure(
        debug=args.debug,
        verbose=args.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON}.get(log_format, kopf.LogFormat.FULL),
        log_refkey="object" if log_format == "json" else None,
    )

    errors.install_log_scrubber()  # no log line carries a secret (errors.scrub)
    # kubelet probes hit the liveness endpoint every few seconds: an access line each would drown the log
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    namespaces = args.namespace
    if args.leader_elect:
        return asyncio.run(
            run_elected({"clusterwide": not namespaces, "namespaces": namespaces, "standalone": True},
                        args.liveness or None)
        )
    metrics.LEADER.set(1)  # the only replica
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not args.peering,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
