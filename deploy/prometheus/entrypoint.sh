#!/bin/sh
# Start Prometheus for docker-compose.yml with basic auth, or probe it (the compose healthcheck).
#
#   entrypoint.sh serve [EXTRA PROMETHEUS FLAGS...]   writes the web config, then execs Prometheus
#   entrypoint.sh healthcheck                         GET /-/healthy with the same credentials
#
# Why a script: Prometheus reads basic-auth users only from a web config file (bcrypt hashes, no
# environment expansion), and compose can pass only environment variables. The lifecycle and admin
# APIs stay off (no --web.enable-lifecycle, no --web.enable-admin-api): whoever reaches the port
# cannot stop Prometheus or delete series. POSIX sh: the prom/prometheus image has busybox only.
#
# Environment: PROMETHEUS_USER, PROMETHEUS_PASSWORD_BCRYPT (serve), PROMETHEUS_PASSWORD
# (healthcheck), PROMETHEUS_RETENTION (default 30d). For tests and other layouts:
# PROMETHEUS_BIN (/bin/prometheus), PROMETHEUS_CONFIG (prometheus.yml beside this script),
# PROMETHEUS_DATA_DIR (/prometheus), PROMETHEUS_LISTEN (0.0.0.0:9090).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
listen=${PROMETHEUS_LISTEN:-0.0.0.0:9090}

fail() {
  echo "deploy/prometheus/entrypoint.sh: $*" >&2
  exit 64
}

require_user() {
  [ -n "${PROMETHEUS_USER:-}" ] || fail "PROMETHEUS_USER is not set (see .env.example)"
  case "$PROMETHEUS_USER" in
    *[!A-Za-z0-9._-]*) fail "PROMETHEUS_USER may use only letters, digits, '.', '_' and '-'" ;;
  esac
}

mode=${1:-serve}
[ $# -gt 0 ] && shift

case "$mode" in
  serve)
    require_user
    hash=${PROMETHEUS_PASSWORD_BCRYPT:-}
    case "$hash" in
      '$2a$'* | '$2b$'* | '$2y$'*) ;;
      *) fail "PROMETHEUS_PASSWORD_BCRYPT is not a bcrypt hash (\$2b\$...); .env.example shows how to make one" ;;
    esac
    case "$hash" in
      *[!A-Za-z0-9./\$]*) fail "PROMETHEUS_PASSWORD_BCRYPT has characters a bcrypt hash never has (quote it in .env)" ;;
    esac
    data=${PROMETHEUS_DATA_DIR:-/prometheus}
    web="$data/web-config.yml"
    umask 077
    printf 'basic_auth_users:\n  %s: "%s"\n' "$PROMETHEUS_USER" "$hash" > "$web"
    exec "${PROMETHEUS_BIN:-/bin/prometheus}" \
      --config.file="${PROMETHEUS_CONFIG:-$here/prometheus.yml}" \
      --storage.tsdb.path="$data" \
      --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-30d}" \
      --web.config.file="$web" \
      --web.listen-address="$listen" \
      "$@"
    ;;
  healthcheck)
    require_user
    [ -n "${PROMETHEUS_PASSWORD:-}" ] || fail "PROMETHEUS_PASSWORD is not set (see .env.example)"
    auth=$(printf '%s:%s' "$PROMETHEUS_USER" "$PROMETHEUS_PASSWORD" | base64 | tr -d '\n')
    exec wget -q -O /dev/null --header "Authorization: Basic $auth" \
      "http://127.0.0.1:${listen##*:}/-/healthy"
    ;;
  *)
    fail "unknown mode '$mode' (serve or healthcheck)"
    ;;
esac
