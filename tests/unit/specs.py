"""The parking example's spec as the unit tests start from it (a fresh copy each call)."""

from __future__ import annotations

import copy
from typing import Any

_PARKING: dict[str, Any] = {
    "database": {
        "host": "127.0.0.1",
        "port": 15432,
        "name": "parking_db",
        "credentialsSecret": {"name": "parking-db-admin"},
    },
    "migrations": {"configMap": {"name": "api-gateway-migrations"}},
    "backup": {"volume": {"claimName": "db-backups"}},
}


def parking(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(_PARKING), **fields}
