"""Helpers shared by the cluster and end-to-end suites: they only know KUBECONFIG and the database address."""
