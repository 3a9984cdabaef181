"""migration-operator: a production database migration runbook as a Kubernetes custom resource."""

__version__ = "0.1.0"
