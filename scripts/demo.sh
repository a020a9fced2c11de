#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stop functions run from the EXIT trap, which shellcheck cannot see
# The cupid-airflow demo on this machine: seeds a source table and its CDC copy (with planted mismatches)
# in the local MariaDB, starts the demo callback receiver, then runs the cupid DAGs of ./dags.
#
#   bash scripts/demo.sh          Airflow standalone (UI on http://localhost:8080); Ctrl-C stops everything
#   bash scripts/demo.sh --once   one run of cupid_user_sync via `airflow dags test`; exits 0 only when the
#                                 receiver got exactly the planted mismatches
#
# Everything the demo writes lives in .demo/ (gitignored): the Airflow home (SQLite metadata DB, logs,
# the generated admin password), planted.json and the logs of the receiver and of Airflow.
# Environment: CUPID_DEMO_UI_PORT (default 8080) moves the Airflow UI.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="$REPO_ROOT/.demo"
DEMO_HOME="$DEMO_DIR/airflow"
CONFIG="$REPO_ROOT/dags/cupid/user.json"
PLANTED="$DEMO_DIR/planted.json"
RECEIVER_HOST="127.0.0.1"
RECEIVER_PORT="18080"   # the callback URL of dags/cupid/user.json
RECEIVER_URL="http://$RECEIVER_HOST:$RECEIVER_PORT"
UI_PORT="${CUPID_DEMO_UI_PORT:-8080}"
SYNC_DAG="cupid_user_sync"
POOL_DAG="cupid_user_failure_pool"

say() { echo "demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }

usage() { sed -n '3,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

MODE="standalone"
for arg in "$@"; do
    case "$arg" in
        --once) MODE="once" ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

# -- processes this script starts, and how they are stopped -----------------------------------------
RECEIVER_PID=""
AIRFLOW_PID=""   # `setsid` makes it the leader of its own session and process group

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Every live process of the Airflow session: the group leader's group plus anything that moved to a
# group of its own (task runners do) but stayed in the session. Zombies are gone already: skipped.
airflow_session_pids() {
    [ -n "$AIRFLOW_PID" ] || return 0
    ps -e -o pid= -o sid= -o stat= | awk -v sid="$AIRFLOW_PID" '$2 == sid && $3 !~ /^Z/ { print $1 }'
}

stop_airflow() {
    [ -n "$AIRFLOW_PID" ] || return 0
    local pids waited=0
    pids="$(airflow_session_pids)"
    if [ -n "$pids" ]; then
        say "stopping Airflow (process group $AIRFLOW_PID)"
        kill -TERM -- "-$AIRFLOW_PID" 2>/dev/null || true
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        while [ -n "$(airflow_session_pids)" ] && [ "$waited" -lt 20 ]; do
            sleep 0.5
            waited=$((waited + 1))
        done
        pids="$(airflow_session_pids)"
        if [ -n "$pids" ]; then
            say "still running after 10 s, killing them:"
            # shellcheck disable=SC2086
            ps -o pid=,args= -p "$(echo $pids | tr ' ' ',')" 2>/dev/null | cut -c1-100 | sed 's/^/demo:   /' || true
            kill -KILL -- "-$AIRFLOW_PID" 2>/dev/null || true
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    AIRFLOW_PID=""
}

stop_receiver() {
    if alive "$RECEIVER_PID"; then
        kill -TERM "$RECEIVER_PID" 2>/dev/null || true
        local waited=0
        while alive "$RECEIVER_PID" && [ "$waited" -lt 10 ]; do
            sleep 0.3
            waited=$((waited + 1))
        done
        if alive "$RECEIVER_PID"; then kill -KILL "$RECEIVER_PID" 2>/dev/null || true; fi
    fi
    if [ -n "$RECEIVER_PID" ]; then wait "$RECEIVER_PID" 2>/dev/null || true; fi
    RECEIVER_PID=""
}

CLEANED=0
cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    set +e
    trap '' INT TERM
    stop_airflow
    stop_receiver
}
trap cleanup EXIT
trap 'echo; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# -- 1. the machine ----------------------------------------------------------------------------------
bash "$REPO_ROOT/scripts/setup.sh"

# -- 2. an environment of our own: nothing inherited may point Airflow elsewhere ----------------------
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep -E '^(AIRFLOW__|AIRFLOW_CONN_|AIRFLOW_VAR_|_AIRFLOW_)' || true)
unset AIRFLOW_CONFIG CUPID_CONFIG_FOLDER
mkdir -p "$DEMO_HOME"
export PATH="$REPO_ROOT/.venv/bin:$PATH"   # standalone starts its components as `airflow ...`
export PYTHONUNBUFFERED=1
export AIRFLOW_HOME="$DEMO_HOME"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$DEMO_HOME/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES="False"
export AIRFLOW__CORE__UNIT_TEST_MODE="False"
export AIRFLOW__CORE__EXECUTOR="LocalExecutor"
export AIRFLOW__CORE__PARALLELISM="8"   # LocalExecutor starts this many workers; the demo needs few
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False"
export AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS="False"   # Airflow loads providers' plugins (the cupid page) only so
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$DEMO_HOME/airflow.db"
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$DEMO_HOME/logs"
export AIRFLOW__API__HOST="127.0.0.1"   # this machine only: every demo login is an admin
export AIRFLOW__API__PORT="$UI_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$UI_PORT/execution/"
PYTHON="$REPO_ROOT/.venv/bin/python"
AIRFLOW__API_AUTH__JWT_SECRET="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')"
export AIRFLOW__API_AUTH__JWT_SECRET

port_busy "$RECEIVER_PORT" && die "port $RECEIVER_PORT is taken (another demo running?); the demo receiver needs it"
if [ "$MODE" = "standalone" ] && port_busy "$UI_PORT"; then
    die "port $UI_PORT is taken; stop what listens there or set CUPID_DEMO_UI_PORT"
fi

# -- 3. the data: source, copy, planted mismatches, a clean delivery store ---------------------------
"$PYTHON" -m cupid_airflow.demo.seed --config "$CONFIG" --planted "$PLANTED" | sed 's/^seed: /demo: /'

# A fresh metadata DB each time: the stored cursors of an earlier demo would skip the re-seeded ids.
rm -rf "$DEMO_HOME/airflow.db" "$DEMO_HOME/logs"

# -- 4. the receiver -------------------------------------------------------------------------------------
start_receiver() {
    "$PYTHON" -m cupid_airflow.demo.receiver --host "$RECEIVER_HOST" --port "$RECEIVER_PORT" &
    RECEIVER_PID=$!
    local waited=0
    until curl -fsS -o /dev/null "$RECEIVER_URL/stats" 2>/dev/null; do
        alive "$RECEIVER_PID" || die "the receiver did not start"
        [ "$waited" -lt 50 ] || die "the receiver did not answer on $RECEIVER_URL within 10 s"
        sleep 0.2
        waited=$((waited + 1))
    done
}

# -- 5a. --once: one DAG run, then the check --------------------------------------------------------------
if [ "$MODE" = "once" ]; then
    start_receiver >"$DEMO_DIR/receiver.log" 2>&1
    say "receiver on $RECEIVER_URL (its output: .demo/receiver.log)"
    started=$SECONDS
    say "airflow db migrate (SQLite in .demo/airflow)"
    airflow db migrate >"$DEMO_DIR/migrate.log" 2>&1 || { tail -20 "$DEMO_DIR/migrate.log"; die "airflow db migrate failed"; }
    say "airflow dags test $SYNC_DAG --conf '{\"start_id\": 1}' (log: .demo/once.log)"
    test_rc=0
    timeout 300 airflow dags test "$SYNC_DAG" --conf '{"start_id": 1}' >"$DEMO_DIR/once.log" 2>&1 || test_rc=$?
    say "the run took $((SECONDS - started)) s with the migration; it $( [ "$test_rc" = 0 ] && echo succeeded || echo "FAILED (exit $test_rc)")"
    sed -n 's/^receiver [0-9:]* | /demo: received /p' "$DEMO_DIR/receiver.log"
    check_rc=0
    "$PYTHON" -m cupid_airflow.demo check --planted "$PLANTED" --receiver "$RECEIVER_URL" \
        --log "$DEMO_DIR/once.log" --wait 5 || check_rc=$?
    if [ "$test_rc" != 0 ]; then
        grep -E "ERROR|Error|error" "$DEMO_DIR/once.log" | tail -15 || true
        say "FAILED: airflow dags test exited $test_rc (full log: .demo/once.log)"
        exit 1
    fi
    exit "$check_rc"
fi

# -- 5b. Airflow standalone, in its own session and process group ------------------------------------------
start_receiver
say "receiver on $RECEIVER_URL: one line per callback below"
say "starting Airflow standalone (log: .demo/standalone.log); the first start takes about a minute"
setsid airflow standalone >"$DEMO_DIR/standalone.log" 2>&1 < /dev/null &
AIRFLOW_PID=$!
waited=0
until curl -fsS -o /dev/null "http://localhost:$UI_PORT/api/v2/version" 2>/dev/null; do
    if ! alive "$AIRFLOW_PID"; then
        tail -30 "$DEMO_DIR/standalone.log" >&2
        die "Airflow standalone exited; see .demo/standalone.log"
    fi
    [ "$waited" -lt 180 ] || die "the Airflow API did not answer on port $UI_PORT within 180 s; see .demo/standalone.log"
    sleep 1
    waited=$((waited + 1))
done
password=""
for _ in $(seq 1 30); do
    password="$("$PYTHON" -m cupid_airflow.demo password "$DEMO_HOME" 2>/dev/null)" && break
    sleep 1
done

cat <<EOF

================================================================================================
 cupid-airflow demo is running (Airflow up after ${waited} s)

 Airflow UI   http://localhost:$UI_PORT     login: admin / ${password:-"(see $DEMO_HOME/simple_auth_manager_passwords.json.generated)"}
 cupid page   http://localhost:$UI_PORT/plugin/cupid   the delivery store and failure pool of each config
 DAGs         $SYNC_DAG          compares cupid_demo.user with cupid_demo_copy.user every 5 s
              $POOL_DAG  retries parked callbacks every 30 s
 Planted      $("$PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['planted']))" "$PLANTED") mismatches (.demo/planted.json): their callbacks appear below within a minute

 Try it (in another terminal):
   add a row the copy never gets        -> a type 1 callback
     mariadb -h127.0.0.1 -uroot -e "INSERT INTO cupid_demo.user (number, name) VALUES (CONCAT('u-new-', FLOOR(RAND()*1e6)), 'Newcomer')"
   change a source row                  -> a type 2 callback (update_time moves by itself)
     mariadb -h127.0.0.1 -uroot -e "UPDATE cupid_demo.user SET name = 'Renamed' WHERE number = 'u-000042'"
   what the receiver got                curl -s $RECEIVER_URL/received
   the failure pool: make the receiver fail, change a row, watch 'deliver' retry 3 times (10 s apart)
   and park it; then let it succeed and $POOL_DAG delivers it
     curl -X POST $RECEIVER_URL/control/fail
     curl -X POST $RECEIVER_URL/control/ok
     .venv/bin/python -m cupid_airflow pool list $CONFIG
 Airflow's own output: tail -f .demo/standalone.log

 Ctrl-C stops everything (the receiver and every Airflow process).
================================================================================================

EOF

# Wait for Ctrl-C (the INT trap exits, the EXIT trap stops everything), or for Airflow to die.
while alive "$AIRFLOW_PID"; do
    wait "$AIRFLOW_PID" 2>/dev/null || true
done
say "Airflow standalone exited by itself; see .demo/standalone.log"
exit 1
