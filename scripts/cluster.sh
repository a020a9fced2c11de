#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called through "$@" dispatch
# Airflow with the CeleryExecutor on this machine, the way docker-compose runs it: a Postgres metadata DB,
# a Redis broker, and scheduler, dag-processor, api-server, triggerer and two Celery workers as separate
# processes (each in its own session), running the cupid DAGs of ./dags unchanged.
#
#   bash scripts/cluster.sh start [--flower]   migrate the metadata DB, start every component, wait until ready
#   bash scripts/cluster.sh stop               stop every component (TERM to each process group, KILL after 30 s)
#   bash scripts/cluster.sh status             one line per component; exit 0 only when all are up and healthy
#   bash scripts/cluster.sh airflow ARGS...    the airflow CLI with the cluster's settings (dags trigger, ...)
#   bash scripts/cluster.sh destroy            stop, drop the Postgres database (if start created it), remove the folder
#
# Everything lives in the cluster folder (default .cluster/, gitignored): airflow/ (AIRFLOW_HOME, task logs,
# config/airflow_local_settings.py preloading cupid), logs/<component>.log, pids/<component>.pid, env (the
# settings, for `source`). Settings (environment):
#   CUPID_CLUSTER_DIR         the cluster folder                              (.cluster)
#   CUPID_CLUSTER_PG          Postgres host:port, trust auth as user postgres (127.0.0.1:5432)
#   CUPID_CLUSTER_PG_DB       the metadata database, created when missing     (cupid_airflow)
#   CUPID_CLUSTER_REDIS       Redis host:port                                 (127.0.0.1:6379)
#   CUPID_CLUSTER_REDIS_DB    the Redis database number of the broker         (7)
#   CUPID_CLUSTER_QUEUE       the Celery queue of every task                  (cupid)
#   CUPID_CLUSTER_WORKERS     Celery workers                                  (2)
#   CUPID_CLUSTER_CONCURRENCY task slots per worker                           (8)
#   CUPID_CLUSTER_API_PORT    api-server port on 127.0.0.1                    (8090)
#   CUPID_CLUSTER_FLOWER_PORT Flower port on 127.0.0.1 with --flower          (5555)
#   CUPID_CLUSTER_DAGS_FOLDER the DAG files                                   (./dags)
# Any other AIRFLOW__*, AIRFLOW_CONN_* or CUPID_CONFIG_FOLDER in the environment reaches every component.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mkdir -p "${CUPID_CLUSTER_DIR:-$REPO_ROOT/.cluster}" && cd "${CUPID_CLUSTER_DIR:-$REPO_ROOT/.cluster}" && pwd)"
PG="${CUPID_CLUSTER_PG:-127.0.0.1:5432}"
PG_HOST="${PG%:*}" PG_PORT="${PG##*:}"
PG_DB="${CUPID_CLUSTER_PG_DB:-cupid_airflow}"
REDIS="${CUPID_CLUSTER_REDIS:-127.0.0.1:6379}"
REDIS_HOST="${REDIS%:*}" REDIS_PORT="${REDIS##*:}"
REDIS_DB="${CUPID_CLUSTER_REDIS_DB:-7}"
QUEUE="${CUPID_CLUSTER_QUEUE:-cupid}"
WORKERS="${CUPID_CLUSTER_WORKERS:-2}"
CONCURRENCY="${CUPID_CLUSTER_CONCURRENCY:-8}"
API_PORT="${CUPID_CLUSTER_API_PORT:-8090}"
FLOWER_PORT="${CUPID_CLUSTER_FLOWER_PORT:-5555}"
DAGS_FOLDER="${CUPID_CLUSTER_DAGS_FOLDER:-$REPO_ROOT/dags}"
STOP_SECONDS=30
READY_SECONDS=180
VENV_BIN="$REPO_ROOT/.venv/bin"

say() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 1; }
usage() { sed -n '3,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

[[ "$PG_DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "CUPID_CLUSTER_PG_DB must be a plain lower-case name, not $PG_DB"
[[ "$QUEUE" =~ ^[A-Za-z0-9_.-]+$ ]] || die "CUPID_CLUSTER_QUEUE must be a plain name, not $QUEUE"
[[ "$WORKERS" =~ ^[1-9][0-9]?$ ]] || die "CUPID_CLUSTER_WORKERS must be 1 to 99, not $WORKERS"

components() {
    echo scheduler dag-processor api-server triggerer
    local i
    for i in $(seq 1 "$WORKERS"); do echo "worker$i"; done
    [ -e "$DIR/pids/flower.pid" ] || [ "${WITH_FLOWER:-0}" = 1 ] && echo flower
    return 0
}

# -- the cluster's Airflow settings -----------------------------------------------------------------------
secret_file() {  # a secret generated once per cluster folder, so restarts keep tokens and encrypted values valid
    local file="$DIR/$1"
    if [ ! -s "$file" ]; then
        (umask 077 && "$VENV_BIN/python" -c "$2" >"$file")
    fi
    cat "$file"
}

configure() {
    [ -x "$VENV_BIN/airflow" ] || die "no venv in $REPO_ROOT/.venv: run scripts/setup.sh first"
    "$VENV_BIN/python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("celery") and u.find_spec("psycopg")))' \
        || die "the celery extra is not installed: run scripts/setup.sh"
    mkdir -p "$DIR/airflow" "$DIR/logs" "$DIR/pids"
    export PATH="$VENV_BIN:$PATH" PYTHONUNBUFFERED=1
    unset PYTHONDONTWRITEBYTECODE  # every task process imports cupid_airflow: cache its bytecode too
    export AIRFLOW_HOME="$DIR/airflow"
    unset AIRFLOW_CONFIG
    export AIRFLOW__CORE__EXECUTOR="CeleryExecutor"
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg://postgres@$PG_HOST:$PG_PORT/$PG_DB"
    export AIRFLOW__CELERY__BROKER_URL="redis://$REDIS_HOST:$REDIS_PORT/$REDIS_DB"
    export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg://postgres@$PG_HOST:$PG_PORT/$PG_DB"
    export AIRFLOW__CELERY__WORKER_CONCURRENCY="$CONCURRENCY"
    # a task still running after this long is handed to another worker (cupid tasks end within 30 minutes)
    export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT="${AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT:-7200}"
    export AIRFLOW__OPERATORS__DEFAULT_QUEUE="$QUEUE"
    export AIRFLOW__CORE__DAGS_FOLDER="$DAGS_FOLDER"
    export AIRFLOW__CORE__PLUGINS_FOLDER="$DIR/airflow/plugins"
    export AIRFLOW__CORE__LOAD_EXAMPLES="False"
    export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
    export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$DIR/airflow/logs"
    export AIRFLOW__API__HOST="127.0.0.1"
    export AIRFLOW__API__PORT="$API_PORT"
    export AIRFLOW__API__BASE_URL="http://127.0.0.1:$API_PORT"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$API_PORT/execution/"
    AIRFLOW__API_AUTH__JWT_SECRET="$(secret_file jwt_secret 'import secrets; print(secrets.token_urlsafe(32))')"
    AIRFLOW__CORE__FERNET_KEY="$(secret_file fernet_key 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__CORE__FERNET_KEY
    # Airflow imports this in every process: task processes forked from the workers start with cupid loaded
    mkdir -p "$AIRFLOW_HOME/config"
    printf '%s\n' '"""Written by scripts/cluster.sh: cupid preloaded in every Airflow process."""' \
        '__all__: list[str] = []' 'import cupid_airflow.preload  # noqa: E402, F401' \
        >"$AIRFLOW_HOME/config/airflow_local_settings.py"
    {
        echo "# the cupid cluster's settings: source this file, then run airflow commands against the cluster"
        compgen -e | grep -E '^(AIRFLOW_HOME|AIRFLOW__[A-Z_]+|CUPID_CONFIG_FOLDER)$' | while read -r name; do
            printf 'export %s=%q\n' "$name" "${!name}"
        done
        # shellcheck disable=SC2016  # $PATH is expanded when the file is sourced
        printf 'export PATH=%q:"$PATH"\n' "$VENV_BIN"
    } >"$DIR/env"
    chmod 600 "$DIR/env"
}

# -- the services this cluster needs --------------------------------------------------------------------------
check_services() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 \
        || die "PostgreSQL does not answer on $PG_HOST:$PG_PORT; start it with" \
            "'pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start' or set CUPID_CLUSTER_PG"
    local pong
    pong="$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" ping 2>&1)" || true
    [ "$pong" = PONG ] || die "Redis does not answer on $REDIS_HOST:$REDIS_PORT (db $REDIS_DB): $pong;" \
        "start it with 'redis-server --daemonize yes --bind 127.0.0.1' or set CUPID_CLUSTER_REDIS"
}

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tA "$@"; }

ensure_database() {
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        say "creating Postgres database $PG_DB on $PG_HOST:$PG_PORT"
        psql_admin -c "CREATE DATABASE \"$PG_DB\""
        echo "$PG_DB" >"$DIR/created_database"  # destroy drops only a database this folder created
    fi
}

# -- processes: each component leads its own session; its pid file holds the session id ----------------------
pid_of() { [ -s "$DIR/pids/$1.pid" ] && cat "$DIR/pids/$1.pid"; }

# Live members of a component's session (task runners and Celery pool children included); zombies skipped.
session_pids() {
    local sid
    sid="$(pid_of "$1")" || return 0
    ps -e -o pid= -o sid= -o stat= | awk -v sid="$sid" '$2 == sid && $3 !~ /^Z/ { print $1 }'
}

running() { [ -n "$(session_pids "$1")" ]; }

launch() {
    local name="$1"
    shift
    local log="$DIR/logs/$name.log"
    echo "=== $(date -u +%FT%TZ) $*" >>"$log"
    setsid "$@" >>"$log" 2>&1 </dev/null &
    local pid=$!
    sleep 0.1
    local sid
    sid="$(ps -o sid= -p "$pid" | tr -d ' ')"
    [ "$sid" = "$pid" ] || die "$name did not get a session of its own (pid $pid, session ${sid:-gone}); see $log"
    echo "$pid" >"$DIR/pids/$name.pid"
    say "started $name (pid $pid, log $log)"
}

start_component() {
    local name="$1"
    case "$name" in
        scheduler) launch "$name" airflow scheduler ;;
        dag-processor) launch "$name" airflow dag-processor ;;
        api-server) launch "$name" airflow api-server --host 127.0.0.1 --port "$API_PORT" ;;
        triggerer) launch "$name" airflow triggerer --skip-serve-logs ;;
        # Workers share the task-log folder (as the compose stack shares a volume), so none serves logs.
        worker*) launch "$name" airflow celery worker --celery-hostname "cupid-$name@%h" --queues "$QUEUE" \
            --concurrency "$CONCURRENCY" --skip-serve-logs --without-gossip --without-mingle ;;
        flower) launch "$name" airflow celery flower --address 127.0.0.1 --port "$FLOWER_PORT" ;;
    esac
}

stop_all() {
    local name pids all=() waited=0
    for name in $(components); do
        pids="$(session_pids "$name")"
        if [ -n "$pids" ]; then
            say "stopping $name (session $(pid_of "$name"))"
            kill -TERM -- "-$(pid_of "$name")" 2>/dev/null || true
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            all+=("$name")
        fi
    done
    while [ "$waited" -lt $((STOP_SECONDS * 2)) ]; do
        local left=0
        for name in "${all[@]}"; do running "$name" && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.5
        waited=$((waited + 1))
    done
    for name in "${all[@]}"; do
        pids="$(session_pids "$name")"
        if [ -n "$pids" ]; then
            say "$name still running after $STOP_SECONDS s, killing: $(echo "$pids" | tr '\n' ' ')"
            kill -KILL -- "-$(pid_of "$name")" 2>/dev/null || true
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    done
    for name in $(components); do rm -f "$DIR/pids/$name.pid"; done
    if [ "${#all[@]}" = 0 ]; then say "nothing was running"; else say "stopped"; fi
}

# -- readiness ----------------------------------------------------------------------------------------------------
health() { curl -fsS --max-time 3 "http://127.0.0.1:$API_PORT/api/v2/monitor/health" 2>/dev/null; }

# "healthy" when the metadata DB, scheduler, dag processor and triggerer all report healthy
health_summary() {
    health | "$VENV_BIN/python" -c '
import json, sys
h = json.load(sys.stdin)
parts = {k: (v or {}).get("status") for k, v in h.items()}
print("healthy" if all(s == "healthy" for s in parts.values()) else " ".join(f"{k}={s}" for k, s in parts.items()))
' 2>/dev/null || echo "api-server not answering"
}

worker_ready() { grep -q "cupid-$1@.* ready\." "$DIR/logs/$1.log" 2>/dev/null; }

wait_ready() {
    local waited=0 name state
    while :; do
        for name in $(components); do
            running "$name" || { tail -25 "$DIR/logs/$name.log" >&2; stop_all; die "$name exited; see $DIR/logs/$name.log"; }
        done
        state="$(health_summary)"
        local workers_ready=1
        for name in $(components); do
            case "$name" in worker*) worker_ready "$name" || workers_ready=0 ;; esac
        done
        [ "$state" = healthy ] && [ "$workers_ready" = 1 ] && break
        if [ "$waited" -ge "$READY_SECONDS" ]; then
            stop_all
            die "not ready after $READY_SECONDS s ($state; workers ready: $workers_ready); logs in $DIR/logs"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "ready after ${waited} s"
}

# -- subcommands --------------------------------------------------------------------------------------------------
cmd_start() {
    WITH_FLOWER=0
    local arg
    for arg in "$@"; do
        case "$arg" in
            --flower) WITH_FLOWER=1 ;;
            *) usage >&2; die "unknown option for start: $arg" ;;
        esac
    done
    configure
    local name
    for name in $(components); do
        running "$name" && die "$name is already running (session $(pid_of "$name")); 'cluster.sh stop' first"
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$API_PORT") 2>/dev/null && die "port $API_PORT is taken; set CUPID_CLUSTER_API_PORT"
    check_services
    ensure_database
    say "airflow db migrate ($PG_HOST:$PG_PORT/$PG_DB; log $DIR/logs/migrate.log)"
    airflow db migrate >"$DIR/logs/migrate.log" 2>&1 || { tail -20 "$DIR/logs/migrate.log" >&2; die "airflow db migrate failed"; }
    for name in $(components); do start_component "$name"; done
    wait_ready
    cmd_status
}

cmd_status() {
    configure
    local name pid rc=0
    for name in $(components); do
        if running "$name"; then
            pid="$(pid_of "$name")"
            printf 'cluster: %-14s running  session %-8s %s processes\n' "$name" "$pid" "$(session_pids "$name" | wc -l)"
        else
            printf 'cluster: %-14s stopped\n' "$name"
            rc=3
        fi
    done
    local state
    state="$(health_summary)"
    say "health: $state"
    [ "$state" = healthy ] || rc=3
    say "metadata DB postgresql://$PG_HOST:$PG_PORT/$PG_DB; broker redis://$REDIS_HOST:$REDIS_PORT/$REDIS_DB, queue $QUEUE"
    say "UI http://127.0.0.1:$API_PORT (login admin, password in $DIR/airflow/simple_auth_manager_passwords.json.generated)"
    say "logs $DIR/logs, task logs $DIR/airflow/logs; settings: source $DIR/env"
    return "$rc"
}

cmd_stop() {
    configure
    stop_all
}

cmd_airflow() {
    configure
    exec airflow "$@"
}

cmd_destroy() {
    configure
    stop_all
    if [ "$(cat "$DIR/created_database" 2>/dev/null)" = "$PG_DB" ]; then
        say "dropping Postgres database $PG_DB"
        psql_admin -c "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)"
    else
        say "keeping Postgres database $PG_DB: this cluster folder did not create it"
    fi
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" del "$QUEUE" >/dev/null 2>&1 || true
    rm -rf "$DIR"
    say "removed $DIR"
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    airflow) cmd_airflow "$@" ;;
    destroy) cmd_destroy ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
