"""A trial's world built outside a fixture (the smoke slice runs several trials at once, each in its own world):
what the e2e `parking` fixture makes, from the same parts (tests/e2e/conftest.py) - a namespace of its own, a copy
of the parking database, the login Secrets, the backup claim, the migrations ConfigMap and the gateway at 3
replicas - all removed on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import (
    CREDENTIALS_OPT_IN,
    GROUP,
    PLURAL,
    PREFIX,
    VERSION,
    ParkingApp,
    _secret,
    gateway_deployment,
)
from tests.support import postgres
from tests.support.kube import temporary_namespace
from tests.support.operator import Operator


@contextlib.contextmanager
def parking_world(api: client.ApiClient, operator: Operator | None) -> Iterator[ParkingApp]:
    with postgres.cloned_database() as database, temporary_namespace(api, PREFIX) as namespace:
        app = ParkingApp(api=api, namespace=namespace, database=database, operator=operator)
        login = {"username": postgres.APP_ROLE, "password": postgres.APP_PASSWORD}
        app.core.create_namespaced_secret(namespace, _secret("parking-db-admin", login, CREDENTIALS_OPT_IN))
        app.core.create_namespaced_secret(namespace, _secret("parking-db-app", login))
        app.core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="db-backups"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ))
        app.set_migrations()
        app.apps.create_namespaced_deployment(namespace, gateway_deployment(database, app.replicas))
        app.wait_gateway_available()
        try:
            yield app
        finally:
            for name in app.created:
                with contextlib.suppress(ApiException):
                    app.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
