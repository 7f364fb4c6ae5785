#!/usr/bin/env bash
# A simulated N-node Ray cluster on 127.0.0.1, for trying the cluster workflow (ray job submit, several
# nodes, token authentication) without a cloud.
#
#   cluster/local.sh up [N] [CPUS_PER_NODE]   # a head + N-1 worker nodes (default N=2, 2 CPUs per node)
#   cluster/local.sh env                       # print the export line again
#   cluster/local.sh down                      # stop this cluster's processes, and only those
#
# Every node is a real Ray node (its own raylet, object store and dashboard agent) on this machine, with its
# own ports, started by cluster/local_cluster.py (ray.cluster_utils.Cluster, kept alive in the background;
# `ray start --address` would need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which makes Ray listen on every
# interface). Worker node i also advertises the custom resource `local_node_i: 1`. Nothing listens on
# another interface than 127.0.0.1. The head advertises CPUS_PER_NODE CPUs like the others (unlike a cloud
# head, which takes no work), so N nodes hold N x CPUS_PER_NODE logical CPUs.
#
# Token authentication: the cluster gets its own fresh token (STATE_DIR/auth_token, mode 600), every node
# runs with RAY_AUTH_MODE=token, and `up` prints the variables a shell needs to reach it:
#   export RAY_ADDRESS=127.0.0.1:PORT RAY_API_SERVER_ADDRESS=http://127.0.0.1:DPORT \
#          RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=STATE_DIR/auth_token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# RAY_ADDRESS is for drivers (ray.init, `jobs/train.py`), RAY_API_SERVER_ADDRESS for `ray job ...`; the last
# one keeps a driver on 127.0.0.1 (else Ray swaps 127.0.0.1 for the machine's interface address).
#
# `down` never runs `ray stop` (that would stop every Ray cluster of this user on the machine): it ends the
# launcher (SIGTERM: it shuts its nodes down), then any process whose command line still names this
# cluster's own Ray temp dir (recorded by `up`: node processes, workers, job drivers), then deletes it.
#
# Environment: RAYSEG_LOCAL_CLUSTER  state dir (default /tmp/rayseg-local-cluster-$UID; one cluster per dir)
#              RAY_BIN               the `ray` executable (default: the repository's .venv/bin/ray, else PATH)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${RAYSEG_LOCAL_CLUSTER:-/tmp/rayseg-local-cluster-$(id -u)}"
if [[ -z "${RAY_BIN:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then RAY_BIN="$REPO_ROOT/.venv/bin/ray"; else RAY_BIN="$(command -v ray || true)"; fi
fi
[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || { echo "error: no 'ray' executable found (make install, or set RAY_BIN)" >&2; exit 2; }
# The python next to `ray` has Ray; it picks free ports and makes the token.
PY="$(dirname "$RAY_BIN")/python"
MARKER=.rayseg-local-cluster
[[ -x "$PY" ]] || PY="$(command -v python3)"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

free_ports() {  # free_ports K: K distinct free TCP ports on 127.0.0.1, one per line
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# PIDs of live processes whose command line contains $1 (this cluster's unique Ray temp dir).
cluster_pids() {
    local needle="$1" dir pid
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        if { tr '\0' ' ' <"$dir/cmdline"; } 2>/dev/null | grep -qF -- "$needle"; then
            # skip zombies: they are gone already, only not yet reaped by their parent
            [[ "$(awk '{print $3}' "$dir/stat" 2>/dev/null)" == "Z" ]] || echo "$pid"
        fi
    done
}

print_env() {
    [[ -f "$STATE_DIR/env" ]] || { echo "error: no local cluster recorded in $STATE_DIR (run: $0 up N)" >&2; exit 1; }
    echo "export $(cat "$STATE_DIR/env")"
}

up() {
    local n="${1:-2}" cpus="${2:-2}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, got '$n'" >&2; exit 2; }
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || { echo "error: CPUS_PER_NODE must be a positive integer, got '$cpus'" >&2; exit 2; }
    if [[ -f "$STATE_DIR/temp_dir" ]] && [[ -n "$(cluster_pids "$(cat "$STATE_DIR/temp_dir")")" ]]; then
        echo "error: a local cluster is already running (state in $STATE_DIR): $0 down first" >&2; exit 1
    fi
    # Only ever delete a folder this script made (it holds the marker file): RAYSEG_LOCAL_CLUSTER may name
    # any path.
    if [[ -e "$STATE_DIR" && ! -f "$STATE_DIR/$MARKER" && -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ]]; then
        echo "error: $STATE_DIR exists and is not a local cluster's state folder: choose another RAYSEG_LOCAL_CLUSTER" >&2
        exit 1
    fi
    rm -rf "$STATE_DIR"
    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    touch "$STATE_DIR/$MARKER"
    # Ray's temp dir: short (Unix socket paths below it are limited to 107 bytes) and unique, so that `down`
    # can recognise this cluster's processes and so that this cluster's ray_current_cluster file is its own.
    local temp_dir
    temp_dir="$(mktemp -d /tmp/ray-local-XXXXXX)"
    echo "$temp_dir" >"$STATE_DIR/temp_dir"
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE_DIR/auth_token")

    # Every node process (and every job driver the job server starts) gets the cluster's token.
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE_DIR/auth_token" RAY_USAGE_STATS_ENABLED=0
    unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS
    # A job's `python` is looked up on the PATH the nodes were started with: put the python next to `ray`
    # (the repository's venv) first, so `ray job submit -- python jobs/train.py ...` finds rayseg.
    PATH="$(dirname "$RAY_BIN"):$PATH"
    export PATH
    echo "starting $n node(s) with $cpus CPUs each on 127.0.0.1 ..." >&2
    # setsid: the cluster outlives this shell and its terminal (Ctrl-C there must not stop it).
    setsid "$PY" "$REPO_ROOT/cluster/local_cluster.py" "$STATE_DIR" "$n" "$cpus" \
        >"$STATE_DIR/launcher.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/launcher.pid"
    local t
    for ((t = 0; t < 600; t++)); do  # up to 5 minutes (a loaded machine)
        [[ -f "$STATE_DIR/env" ]] && break
        if ! kill -0 "$(cat "$STATE_DIR/launcher.pid")" 2>/dev/null; then
            echo "error: the local cluster did not start; its log ($STATE_DIR/launcher.log) ends with:" >&2
            tail -n 30 "$STATE_DIR/launcher.log" >&2
            down_quiet; exit 1
        fi
        sleep 0.5
    done
    if [[ ! -f "$STATE_DIR/env" ]]; then
        echo "error: the local cluster was not up after 5 minutes (log: $STATE_DIR/launcher.log)" >&2
        down_quiet; exit 1
    fi
    cluster_pids "$temp_dir" >"$STATE_DIR/pids"
    echo "local Ray cluster up: $n node(s), $cpus CPUs each, state in $STATE_DIR. In your shell:" >&2
    print_env
}

# Stop what `up` recorded: the PIDs it saw, plus any process started since (workers, job drivers) whose
# command line names this cluster's temp dir. SIGTERM first, SIGKILL for what is left after 10 s.
down_quiet() {
    [[ -f "$STATE_DIR/$MARKER" && -f "$STATE_DIR/temp_dir" ]] || return 0
    local temp_dir pids sig t
    temp_dir="$(cat "$STATE_DIR/temp_dir")"
    [[ "$temp_dir" == /tmp/ray-local-* ]] || { echo "error: unexpected temp dir '$temp_dir' in $STATE_DIR" >&2; return 1; }
    # The launcher shuts its Cluster down cleanly on SIGTERM; whatever is left is ended below.
    local launcher
    launcher="$(cat "$STATE_DIR/launcher.pid" 2>/dev/null || true)"
    if [[ -n "$launcher" ]] && { tr '\0' ' ' <"/proc/$launcher/cmdline"; } 2>/dev/null | grep -qF local_cluster.py; then
        kill -s TERM "$launcher" 2>/dev/null || true
        for ((t = 0; t < 150; t++)); do
            kill -0 "$launcher" 2>/dev/null || break
            sleep 0.2
        done
    fi
    for sig in TERM KILL; do
        # `up` recorded its PIDs in STATE_DIR/pids; matching the temp dir finds those that are still this
        # cluster's (a reused PID no longer names it) and the processes started since.
        pids="$(cluster_pids "$temp_dir")"
        [[ -z "$pids" ]] && break
        # shellcheck disable=SC2086
        kill -s "$sig" $pids 2>/dev/null || true
        for ((t = 0; t < 50; t++)); do
            [[ -z "$(cluster_pids "$temp_dir")" ]] && break 2
            sleep 0.2
        done
    done
    if [[ -n "$(cluster_pids "$temp_dir")" ]]; then
        echo "error: processes of the local cluster survived SIGKILL: $(cluster_pids "$temp_dir" | tr '\n' ' ')" >&2
        return 1
    fi
    rm -rf "$temp_dir" "$STATE_DIR"
}

down() {
    if [[ ! -f "$STATE_DIR/$MARKER" || ! -f "$STATE_DIR/temp_dir" ]]; then
        echo "no local cluster recorded in $STATE_DIR: nothing to stop" >&2; return 0
    fi
    down_quiet
    echo "local Ray cluster stopped" >&2
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    env) print_env ;;
    *) usage ;;
esac
