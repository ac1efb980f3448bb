#!/usr/bin/env bash
# A trial of several instances on this computer: deploy/run-local.sh [N]
#
# Starts a throwaway PostgreSQL cluster (Debian's postgresql package; none if DATABASE_URL names
# a database), N instances of the app (2 by default) on 127.0.0.1, ports PORT+1 ... PORT+N, and
# nginx on PORT (8000 by default) in front of them with deploy/nginx.conf, as an ordinary user.
# Open http://localhost:PORT. Ctrl-C (or SIGTERM) stops the instances (each lets its running
# answers finish, up to DRAIN_SECONDS), then nginx and PostgreSQL, and removes the temporary
# files; a second Ctrl-C stops the instances at once.
#
# Settings come from the environment and .env as for one instance (GEMINI_API_KEY, ...);
# FAIL_TIMEOUT (10s) is nginx's, see deploy/render-nginx.sh.
# The throwaway database starts empty, so the app runs in local mode (this computer only); with
# DATABASE_URL naming a database that has accounts, set CHAINLIT_AUTH_SECRET as well.
set -euo pipefail

count="${1:-2}"
port="${PORT:-8000}"
if ! [[ "$count" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [NUMBER_OF_INSTANCES]   (PORT=8000 by default; instances on PORT+1 ...)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
deploy="$(pwd)/deploy"

nginx_bin="$(command -v nginx || command -v /usr/sbin/nginx || true)"
if [ -z "$nginx_bin" ]; then
    echo "nginx is not installed: apt-get install nginx" >&2
    exit 1
fi
if [ -z "${DATABASE_URL:-}" ]; then
    pg_bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -rV | head -1)")"
    if [ ! -x "$pg_bin/initdb" ]; then
        echo "PostgreSQL is not installed (apt-get install postgresql), and DATABASE_URL is" \
            "not set" >&2
        exit 1
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gemini-chat-local-XXXXXX")"
# As root, nginx's workers and PostgreSQL run as other users and must reach their directories.
chmod 755 "$work"
instance_pids=()
nginx_pid=""
postgres_up=""

stop_all() {
    local status=$?
    trap - EXIT
    trap 'echo "--- stopping the instances at once"; kill -INT "${instance_pids[@]}" 2>/dev/null' INT TERM
    echo "--- stopping (Ctrl-C again to stop at once)"
    if [ "${#instance_pids[@]}" -gt 0 ]; then
        kill -TERM "${instance_pids[@]}" 2>/dev/null || true
        for pid in "${instance_pids[@]}"; do
            wait "$pid" 2>/dev/null || true
        done
    fi
    if [ -n "$nginx_pid" ]; then
        kill -QUIT "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    if [ -n "$postgres_up" ]; then
        as_postgres "$pg_bin/pg_ctl" -D "$work/postgres" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$work"
    echo "--- stopped"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_postgres() {
    # PostgreSQL refuses to run as root.
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    uv run --no-project python -c \
        'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    # The servers offer no event to wait on: ask every 0.2 s, up to 90 s.
    local url="$1" pid="$2"
    for _ in $(seq 450); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

if [ -z "${DATABASE_URL:-}" ]; then
    echo "--- PostgreSQL (throwaway, in $work/postgres)"
    mkdir "$work/postgres"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$work/postgres"
    fi
    as_postgres "$pg_bin/initdb" -D "$work/postgres" -U postgres --auth=trust -E UTF8 >/dev/null
    pg_port="$(free_port)"
    as_postgres setsid "$pg_bin/pg_ctl" -D "$work/postgres" -l "$work/postgres/server.log" -w \
        -o "-p $pg_port -k $work/postgres -c listen_addresses=127.0.0.1" start >/dev/null
    postgres_up=1
    as_postgres "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE chat LOGIN PASSWORD 'chat'" -c "CREATE DATABASE chat OWNER chat"
    export DATABASE_URL="postgresql+asyncpg://chat:chat@127.0.0.1:$pg_port/chat"
fi

echo "--- the app's environment (uv sync)"
uv sync --locked --quiet

# nginx on this computer is the proxy whose X-Forwarded-For the instances believe.
export FORWARDED_ALLOW_IPS=127.0.0.1
instances=()
start_instance() {
    local index="$1" instance_port=$((port + $1))
    instances+=("127.0.0.1:$instance_port")
    echo "--- instance $index on 127.0.0.1:$instance_port"
    # A session of its own: Ctrl-C reaches this script only, which stops everything in order.
    setsid uv run --locked chainlit run chatbot.py --headless --host 127.0.0.1 \
        --port "$instance_port" > >(
            # Its log, shown with the instance's number, outlives a Ctrl-C while it drains.
            trap '' INT
            tee "$work/app-$index.log" | sed -u "s/^/[app $index] /"
        ) 2>&1 &
    instance_pids+=("$!")
}
wait_for_instance() {
    local index="$1"
    if ! wait_for "http://127.0.0.1:$((port + index))/health" "${instance_pids[$((index - 1))]}"
    then
        echo "instance $index did not start (its log is above)" >&2
        exit 1
    fi
}
# The first instance prepares the database alone; the others start together after it.
start_instance 1
wait_for_instance 1
for index in $(seq 2 "$count"); do
    start_instance "$index"
done
for index in $(seq 2 "$count"); do
    wait_for_instance "$index"
done

echo "--- nginx on port $port (access log: $work/nginx/logs/access.log)"
mkdir -p "$work/nginx/logs"
"$deploy/render-nginx.sh" "$port" "${instances[@]}" >"$work/nginx/nginx.conf"
setsid "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
if ! wait_for "http://127.0.0.1:$port/health" "$nginx_pid"; then
    echo "nginx did not start" >&2
    exit 1
fi

echo "--- ready: open http://localhost:$port ($count instances; Ctrl-C stops them all)"
wait "$nginx_pid"
