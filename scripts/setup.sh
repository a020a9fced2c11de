#!/usr/bin/env bash
# Prepares this machine for cupid-airflow: system packages, uv, the project venv, MariaDB.
# Idempotent: each step checks first and does nothing when already done. Runs as root on Debian 12.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"
MARIADB_HOST="127.0.0.1"
MARIADB_PORT="3306"

say() { echo "setup: $*"; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_debian_packages() {
    local missing=()
    local package
    # chromium and its driver: the cupid page's real-browser test (Playwright drives /usr/bin/chromium)
    for package in libmariadb-dev pkg-config chromium chromium-driver; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    # mysqlclient compiles from source: it needs a C compiler and the Python headers too.
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    if ! python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        missing+=(python3-dev)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    else
        say "system packages present"
    fi
}

ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV=(uv)
    else
        say "installing uv==$UV_VERSION"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "uv==$UV_VERSION"
        if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python3 -m uv); fi
    fi
    say "$("${UV[@]}" --version)"
}

# The celery extra (Celery provider, Postgres driver) is what scripts/cluster.sh and its tests need.
# Bytecode is compiled once here: with PYTHONDONTWRITEBYTECODE set (as on this machine) every Airflow
# process, each task run included, would otherwise compile Airflow from source (3x the start-up CPU).
sync_venv() {
    say "uv sync --frozen --extra celery --compile-bytecode"
    (cd "$REPO_ROOT" && "${UV[@]}" sync --frozen --extra celery --compile-bytecode --quiet)
}

# Up means: ping succeeds, or the port accepts connections (a fresh server may refuse our login).
mariadb_answers() {
    mariadb-admin -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot --connect-timeout=2 ping >/dev/null 2>&1 \
        || (exec 3<>"/dev/tcp/$MARIADB_HOST/$MARIADB_PORT") 2>/dev/null
}

ensure_mariadb() {
    command -v mariadb-admin >/dev/null 2>&1 || apt_install mariadb-client
    if mariadb_answers; then
        say "MariaDB answering on $MARIADB_HOST:$MARIADB_PORT"
        return
    fi
    [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
    say "starting MariaDB"
    install -d -o mysql -g mysql /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    local waited=0
    until mariadb_answers; do
        if [ "$waited" -ge 30 ]; then
            say "MariaDB did not answer on $MARIADB_HOST:$MARIADB_PORT within 30 s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "MariaDB answering after ${waited}s"
}

# Tests log in as root with an empty password over TCP; a fresh Debian install only lets root in
# through the unix socket. Only ever done on a local test server that refuses that login.
ensure_mariadb_root_login() {
    if [ -n "${CUPID_TEST_MYSQL_USER:-}${CUPID_TEST_MYSQL_PASSWORD:-}" ]; then
        return
    fi
    if mariadb -h"$MARIADB_HOST" -P"$MARIADB_PORT" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        return
    fi
    say "allowing root with an empty password on $MARIADB_HOST"
    mariadb -uroot <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
}

ensure_debian_packages
ensure_uv
sync_venv
ensure_mariadb
ensure_mariadb_root_login
say "ready"
