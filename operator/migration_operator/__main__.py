"""`python -m migration_operator`: run the operator (kopf) with the handlers of this package."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf

from . import errors, handlers  # noqa: F401  (importing handlers registers them with kopf)

USAGE_EPILOG = """
environment:
  KUBECONFIG             kubeconfig outside a cluster (in-cluster config is tried first)
  METRICS_PORT           Prometheus port (default 8080; 0 disables); --metrics-port wins
  METRICS_HOST           address the metrics server binds (default 0.0.0.0)
  LOG_FORMAT             plain | full | json (default full); --log-format wins
  POD_NAMESPACE          namespace of the per-database Leases (default: each run's own namespace)
  DBOPS_LOCK_NAMESPACE   overrides POD_NAMESPACE for the Leases

examples:
  python -m migration_operator --all-namespaces
  python -m migration_operator --namespace parking --liveness http://0.0.0.0:8081/healthz
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=not args.peering,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
