#!/usr/bin/env bash
# Creates (once) the project's virtualenv outside the checkout, keyed by the dependency list, and installs this
# checkout into it in editable mode (seconds when the venv exists). Prints the venv path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/hack/versions.sh"
key=$( (python3 --version; sed -n '/^dependencies/,/^\[tool.hatch/p' "$root/pyproject.toml") | sha256sum | cut -c1-12)
venv="$MO_CACHE/venv/$key"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating virtualenv $venv" >&2
  python3 -m venv "$venv.tmp"
  "$venv.tmp/bin/pip" install --quiet --upgrade pip >&2
  "$venv.tmp/bin/pip" install --quiet -e "$root[dev]" >&2
  rm -rf "$venv" && mv "$venv.tmp" "$venv"
  # the venv was built in .tmp: rewrite its scripts' shebangs to the final path
  grep -rl "$venv.tmp" "$venv/bin" | xargs -r sed -i "s#$venv.tmp#$venv#g"
fi
# (re)point the editable install at this checkout: CI clones afresh into another folder
"$venv/bin/pip" install --quiet --no-deps -e "$root" >&2
ln -sfn "$venv" "$MO_CACHE/venv/current"
echo "$venv"
