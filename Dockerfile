# The operator image: ghcr.io/dbops/migration-operator (the chart's default image).
#   docker build -t ghcr.io/dbops/migration-operator:0.1.0 .
# The local cluster builds it with buildah (hack/build-images.sh migration-operator) and serves it from its
# registry; hack/test-kind.sh builds it with docker and loads it into kind.
#
# The dependencies are installed in a layer of their own, before the operator's code is copied: a change to
# operator/ reuses that layer (with a layer-caching builder) and only reinstalls the package itself.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /src
# The dependencies as pyproject.toml lists them (and hatchling, the build backend, so that the package itself
# installs without build isolation, offline).
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
    && /venv/bin/pip install -r /tmp/requirements.txt hatchling
# hatchling needs the readme named in pyproject.toml.
COPY README.md ./
COPY operator ./operator
RUN /venv/bin/pip install --no-deps --no-build-isolation . && /venv/bin/pip uninstall -y -q hatchling

FROM python:3.11-slim
# A named user for the uid: kopf names the operator after it (getpass.getuser(), which fails for a uid without a
# passwd entry unless USER is set); USER covers a runAsUser other than 65532 too.
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin nonroot
# Same base image, so the virtualenv's interpreter path is valid here too; no compiler, no pip cache.
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    USER=nonroot
# Non-root, numeric so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "migration_operator"]
