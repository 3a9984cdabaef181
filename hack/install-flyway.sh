#!/usr/bin/env bash
# Installs the Flyway command line (PostgreSQL only) from Maven Central into
#   $MO_CACHE/flyway/$FLYWAY_VERSION/{lib,drivers,flyway}
# and points $MO_CACHE/flyway/current at it.
#
# flyway-commandline depends on ~30 database plugins and their drivers (cloud SDKs, Oracle, Snowflake,
# Spanner, ...: hundreds of MB). We generate a throw-away pom that depends on flyway-commandline and
# excludes every direct dependency of it that is not on the allowlist below (the core, the verbs,
# the PostgreSQL plugin, the JSON/TOML/XML config readers, logging, console), then let
# `mvn dependency:copy-dependencies` resolve the rest; ~/.m2 is the download cache.
#
# Version: 12.4.0 (Java 17+). Newer CLIs are not installable from the registry reachable here: for 12.11.0 and
# 13.x, flyway-commandline's own modules (flyway-verb-*, flyway-nc-core, flyway-core-utilities, ...) are not
# served, although flyway-core and flyway-database-postgresql are.
# Exit codes: the CLI exits 0 when a migration fails during `migrate` and when `validate -outputType=json`
# finds problems; callers must read the JSON (success / validationSuccessful / error).
#
# Idempotent: a completed install is marked with .complete and a second run returns at once.
# Usage: hack/install-flyway.sh [--force]
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.sh
source "$HACK_DIR/versions.sh"

FLYWAY_HOME="$MO_CACHE/flyway/$FLYWAY_VERSION"
CURRENT="$MO_CACHE/flyway/current"

if [[ "${1:-}" != "--force" && -f "$FLYWAY_HOME/.complete" ]]; then
  if [[ "$(readlink "$CURRENT" 2>/dev/null || true)" != "$FLYWAY_VERSION" ]]; then
    ln -sfn "$FLYWAY_VERSION" "$CURRENT"
  fi
  exit 0
fi

command -v java >/dev/null || [[ -n "${JAVA_HOME:-}" ]] || { echo "install-flyway: java not found (Java 17+ needed)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "install-flyway: mvn not found (apt-get install maven)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install-flyway: python3 not found" >&2; exit 1; }

MVN=(mvn -B -q --no-transfer-progress)
mkdir -p "$MO_CACHE/flyway"
WORK="$(mktemp -d "$MO_CACHE/flyway/.install-$FLYWAY_VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "install-flyway: resolving org.flywaydb:flyway-commandline:$FLYWAY_VERSION (PostgreSQL only)" >&2
"${MVN[@]}" dependency:get -Dtransitive=false \
  "-Dartifact=org.flywaydb:flyway-commandline:$FLYWAY_VERSION:pom" >"$WORK/get.log" 2>&1 \
  || { cat "$WORK/get.log" >&2; exit 1; }
M2_REPO="$("${MVN[@]}" help:evaluate -Dexpression=settings.localRepository -DforceStdout 2>/dev/null || true)"
[[ -d "$M2_REPO" ]] || M2_REPO="$HOME/.m2/repository"
CLI_POM="$M2_REPO/org/flywaydb/flyway-commandline/$FLYWAY_VERSION/flyway-commandline-$FLYWAY_VERSION.pom"
[[ -f "$CLI_POM" ]] || { echo "install-flyway: $CLI_POM missing" >&2; exit 1; }

# Generate the pom: keep the allowlisted direct dependencies, exclude all the others.
python3 - "$CLI_POM" "$FLYWAY_VERSION" "$POSTGRES_JDBC_VERSION" >"$WORK/pom.xml" <<'PY'
import re
import sys
import xml.etree.ElementTree as ET

cli_pom, version, jdbc_version = sys.argv[1:4]
ns = {"m": "http://maven.apache.org/POM/4.0.0"}
root = ET.parse(cli_pom).getroot()
KEEP = [
    r"org\.flywaydb:flyway-core",
    r"org\.flywaydb:flyway-database-postgresql",
    r"org\.flywaydb:flyway-verb-.*",
    r"org\.flywaydb:flyway-core-utilities",
    r"org\.flywaydb:flyway-nc-core",
    r"org\.flywaydb:flyway-command-test-connection",
    r"org\.postgresql:postgresql",
    r"org\.jline:jansi",
    r"org\.apache\.commons:commons-text",
    r"org\.slf4j:slf4j-nop",
    r"tools\.jackson\..*",
    r"com\.fasterxml\.jackson\..*",
]
excl = set()
for dep in root.findall("m:dependencies/m:dependency", ns):
    g = (dep.findtext("m:groupId", "", ns) or "").replace("${project.groupId}", "org.flywaydb")
    a = dep.findtext("m:artifactId", "", ns) or ""
    scope = dep.findtext("m:scope", "compile", ns)
    if scope in ("test", "provided", "system"):
        continue
    if not any(re.fullmatch(k, f"{g}:{a}") for k in KEEP):
        excl.add((g, a))
exclusions = "\n".join(
    f"        <exclusion><groupId>{g}</groupId><artifactId>{a}</artifactId></exclusion>"
    for g, a in sorted(excl)
)
print(f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.migration-operator</groupId>
  <artifactId>flyway-postgresql-cli</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.flywaydb</groupId>
      <artifactId>flyway-commandline</artifactId>
      <version>{version}</version>
      <exclusions>
{exclusions}
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.flywaydb</groupId>
      <artifactId>flyway-database-postgresql</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.postgresql</groupId>
      <artifactId>postgresql</artifactId>
      <version>{jdbc_version}</version>
    </dependency>
  </dependencies>
</project>""")
PY

(cd "$WORK" && "${MVN[@]}" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$WORK/dist/lib" >"$WORK/copy.log" 2>&1) \
  || { cat "$WORK/copy.log" >&2; exit 1; }

mkdir -p "$WORK/dist/drivers" "$WORK/dist/conf" "$WORK/dist/sql"
mv "$WORK/dist/lib"/postgresql-*.jar "$WORK/dist/drivers/"
cp "$WORK/pom.xml" "$WORK/dist/install-pom.xml"

cat >"$WORK/dist/flyway" <<'SH'
#!/usr/bin/env bash
# Flyway command line (PostgreSQL only), installed by hack/install-flyway.sh.
set -euo pipefail
src="${BASH_SOURCE[0]}"
while [[ -L "$src" ]]; do
  dir="$(cd -P "$(dirname "$src")" && pwd)"
  src="$(readlink "$src")"
  [[ "$src" == /* ]] || src="$dir/$src"
done
FLYWAY_HOME="$(cd -P "$(dirname "$src")" && pwd)"
if [[ -n "${JAVA_HOME:-}" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA="java"; fi
# No network here beyond package registries: keep Redgate's telemetry / update checks off.
export REDGATE_DISABLE_TELEMETRY="${REDGATE_DISABLE_TELEMETRY:-true}"
export FLYWAY_TELEMETRY_OPTOUT="${FLYWAY_TELEMETRY_OPTOUT:-true}"
# shellcheck disable=SC2086
exec "$JAVA" ${JAVA_ARGS:--Xss2m -XX:+UseSerialGC -XX:TieredStopAtLevel=1} \
  -Djava.security.egd=file:/dev/../dev/urandom \
  -cp "$FLYWAY_HOME/lib/*:$FLYWAY_HOME/drivers/*" org.flywaydb.commandline.Main "$@"
SH
chmod 0755 "$WORK/dist/flyway"
touch "$WORK/dist/.complete"

rm -rf "$FLYWAY_HOME"
mv "$WORK/dist" "$FLYWAY_HOME"
ln -sfn "$FLYWAY_VERSION" "$CURRENT"
echo "install-flyway: installed $(du -sh "$FLYWAY_HOME" | cut -f1) into $FLYWAY_HOME ($(ls "$FLYWAY_HOME/lib" | wc -l) jars)" >&2
