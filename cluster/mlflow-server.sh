#!/usr/bin/env bash
# A team MLflow tracking server for rayseg runs: a database for runs and registered models, an artifact store
# that the server proxies (clients need no storage credentials of their own), bound to 127.0.0.1 unless told.
#
#   cluster/mlflow-server.sh                                  # SQLite + folder under ~/rayseg-mlflow, 127.0.0.1:5000
#   cluster/mlflow-server.sh --db postgresql://USER@HOST:5432/mlflow --artifacts s3://BUCKET/mlflow
#   cluster/mlflow-server.sh --host 0.0.0.0 --port 5000      # reachable by the cluster's nodes (see below)
#
# Options (each also read from the environment variable in brackets):
#   --db URI          [MLFLOW_DB]         runs, experiments and the model registry (default: SQLite file
#                                         ~/rayseg-mlflow/mlflow.db). A postgresql:// URI needs psycopg2
#                                         (pip install psycopg2-binary); its password comes from ~/.pgpass or
#                                         PGPASSWORD, never from this command line.
#   --artifacts DEST  [MLFLOW_ARTIFACTS]  where the server stores artifacts: a folder or s3://… (credentials from
#                                         the environment / instance profile; default ~/rayseg-mlflow/artifacts)
#   --host ADDR       [MLFLOW_HOST]       interface to listen on (default 127.0.0.1: this machine only). Other
#                                         machines (a cluster's workers) need 0.0.0.0 or the private IP; keep
#                                         the port closed to the internet (security group / firewall) — the
#                                         server has no authentication.
#   --port N          [MLFLOW_PORT]       default 5000
#   --workers N                           gunicorn/uvicorn workers (default 2)
#
# It prints the line to use, e.g. `mlflow.tracking_uri: http://10.0.0.5:5000`, then runs in the foreground
# (put it under tmux, systemd or `ray exec --tmux`). Ctrl-C stops it. tests/test_mlflow_server_script.py starts
# it as written here.
set -euo pipefail

DB="${MLFLOW_DB:-}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS=2
ROOT="${HOME}/rayseg-mlflow"

while [ $# -gt 0 ]; do
    case "$1" in
        --db) DB="$2"; shift 2 ;;
        --artifacts) ARTIFACTS="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
    esac
done

# The project's venv when run from a checkout, else the mlflow on PATH.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$HERE/.venv/bin/mlflow" ]; then MLFLOW="$HERE/.venv/bin/mlflow"; PYTHON="$HERE/.venv/bin/python"
elif command -v mlflow >/dev/null; then MLFLOW="$(command -v mlflow)"; PYTHON="$(dirname "$MLFLOW")/python"
else echo "error: mlflow is not installed (make install, or pip install mlflow)" >&2; exit 2; fi
[ -x "$PYTHON" ] || PYTHON=python3

if [ -z "$DB" ]; then mkdir -p "$ROOT"; DB="sqlite:///$ROOT/mlflow.db"; fi
if [ -z "$ARTIFACTS" ]; then ARTIFACTS="$ROOT/artifacts"; fi
case "$DB" in
    sqlite:///*) mkdir -p "$(dirname "${DB#sqlite:///}")" ;;
    postgresql://*|postgresql+psycopg2://*)
        REST="${DB#*://}"
        case "$REST" in *@*) case "${REST%%@*}" in *:*)
            echo "error: put the database password in ~/.pgpass or PGPASSWORD, not in --db" >&2; exit 2 ;; esac ;; esac
        "$PYTHON" -c "import psycopg2" 2>/dev/null || {
            echo "error: --db $DB needs psycopg2: $PYTHON -m pip install psycopg2-binary" >&2; exit 2; } ;;
    *) echo "error: --db must be sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST:PORT/DB, got $DB" >&2; exit 2 ;;
esac
case "$ARTIFACTS" in
    s3://*|gs://*) ;;
    /*) mkdir -p "$ARTIFACTS" ;;
    *) ARTIFACTS="$(pwd)/$ARTIFACTS"; mkdir -p "$ARTIFACTS" ;;
esac

SHOWN="$HOST"
if [ "$HOST" = "0.0.0.0" ]; then
    SHOWN="$(hostname -I 2>/dev/null | awk '{print $1}')"; SHOWN="${SHOWN:-$(hostname)}"
    echo "note: listening on every interface; only machines that can reach port $PORT should (no authentication)" >&2
fi
echo "MLflow server: runs in $DB, artifacts in $ARTIFACTS"
echo "set in your config or --cfg-options:  mlflow.tracking_uri=http://$SHOWN:$PORT"
# --allowed-hosts: MLflow's DNS-rebinding guard accepts the name clients use.
exec "$MLFLOW" server --backend-store-uri "$DB" --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" --allowed-hosts "$SHOWN:$PORT,$SHOWN,localhost:$PORT,127.0.0.1:$PORT"
