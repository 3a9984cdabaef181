"""migration-operator: a production database migration runbook as a Kubernetes custom resource."""

import sys

__version__ = "0.1.0"


def _load_kopf_without_the_official_client() -> None:
    """kopf imports the official client (`kubernetes`, ~19 MiB of RSS) whenever it is installed, at its own import and
    when it makes its default registry, to recognise the client's model objects and to log in with it: the operator
    uses neither (`kube.py`, `handlers.login`). Hidden from kopf while kopf loads, it never enters the operator's
    process; whoever imports it afterwards (the kubectl plugin, tests) gets it as usual."""
    if "kopf" in sys.modules or "kubernetes" in sys.modules:
        return
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # an import of it raises ImportError meanwhile
    try:
        import kopf

        kopf.get_default_registry()
    finally:
        del sys.modules["kubernetes"]


_load_kopf_without_the_official_client()
