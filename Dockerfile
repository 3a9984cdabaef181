# The operator image: ghcr.io/dbops/migration-operator. Built by hack/test-kind.sh (and CI); the local cluster
# maps this image to the project's virtualenv instead (hack/images.yaml), so it is not built on these machines.
#   docker build -t ghcr.io/dbops/migration-operator:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
WORKDIR /src
# hatchling needs the readme named in pyproject.toml.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /venv/bin/pip install .

FROM python:3.11-slim
# Same base image, so the virtualenv's interpreter path is valid here too; no compiler, no pip cache.
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root, numeric so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "migration_operator"]
