# The parking example's migrations as an image, for spec.migrations.image (no 1 MiB ConfigMap limit):
#   docker build -f examples/parking/migrations.Dockerfile -t ghcr.io/dbops/parking-migrations:6 examples/parking
# The operator's Flyway Job copies `path` (here /flyway/sql) with an init container of this image, which needs
# `sh` and `cp`: hence busybox, not scratch. Flyway finds the files in the subfolders (it scans recursively).
FROM busybox:1.37
COPY migrations/ /flyway/sql/release-5/
COPY migrations-next/good/ /flyway/sql/release-6/
USER 65532:65532
