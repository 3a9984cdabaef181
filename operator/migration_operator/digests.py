"""Keyed digests for what status publishes about table contents.

`status.before/after` carry a checksum per table (and a hash of the catalog) so that a rollback can tell whether the
failed run changed anything. A plain md5 of a small table's rows is a dictionary attack away from the rows themselves
for anyone who may `get` DatabaseMigrations. So status holds HMAC-SHA256 digests under a per-run key: HMAC of the
operator's key and the run's uid. Equal contents give equal digests within a run (and across operator restarts, as
long as the operator's key stays), and nothing outside the operator can compute or compare them.

The operator's key: env DBOPS_CHECKSUM_KEY, or the file named by DBOPS_CHECKSUM_KEY_FILE (the chart keeps it in a
Secret of the release, generated once). Without either, a random key per process: digests are then not comparable
across a restart, and a rollback after one restores instead of skipping the restore (safe, only slower).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

ENV_KEY = "DBOPS_CHECKSUM_KEY"
ENV_KEY_FILE = "DBOPS_CHECKSUM_KEY_FILE"
PREFIX = "hmac-sha256:"
logger = logging.getLogger(__name__)


@functools.cache  # the process's key: read (or made) once, like the rest of the operator's configuration
def operator_key() -> bytes:
    value = os.environ.get(ENV_KEY, "")
    path = os.environ.get(ENV_KEY_FILE, "")
    if not value and path and Path(path).is_file():
        value = Path(path).read_text().strip()
    if value:
        return value.encode()
    logger.warning(
        "no %s or %s: table checksums use a key of this process only (not comparable after a restart)",
        ENV_KEY,
        ENV_KEY_FILE,
    )
    return secrets.token_bytes(32)


def run_key(uid: str) -> bytes:
    return hmac.new(operator_key(), b"dbops.io/run/" + uid.encode(), hashlib.sha256).digest()


def keyed(uid: str, digest: str) -> str:
    """`digest` (an md5 the database computed) under the run's key: what status may show."""
    return PREFIX + hmac.new(run_key(uid), digest.encode(), hashlib.sha256).hexdigest()[:32]
