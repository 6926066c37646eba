#!/usr/bin/env bash
# Run a command with a Docker engine answering: the one already running, else one started here
# (Debian's docker.io, installed with apt where absent) and stopped again, by its PID, afterwards.
#
#   docker/with-engine.sh COMMAND [ARG...]
#
# The engine is started as `dockerd --bridge=none --iptables=false`: no bridge network and no
# iptables rules, so it leaves the machine's network alone; containers use --network host.
# Where no engine can be had (not root, no apt, dockerd fails to start) the command is skipped
# with a loud message and the exit status is 0: the rest of CI still runs.
set -euo pipefail

skip() {
    {
        printf '\n%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        printf '!!! SKIPPED, the container was NOT built or run: %s\n' "$*"
        printf '%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    } >&2
    exit 0
}

engine_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

if ! engine_answers; then
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
            || skip "no Docker engine, and apt-get as root is not available to install docker.io"
        echo "with-engine: installing docker.io" >&2
        apt-get install -y -q docker.io >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker.io >/dev/null; } \
            || skip "apt-get install docker.io failed"
    fi
    [ "$(id -u)" = 0 ] || skip "no Docker engine runs, and starting dockerd needs root"
    log=$(mktemp /tmp/dockerd.XXXXXX.log)
    dockerd --bridge=none --iptables=false >"$log" 2>&1 &
    dockerd_pid=$!
    stop_engine() {
        kill -TERM "$dockerd_pid" 2>/dev/null || return 0
        for _ in $(seq 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || { wait "$dockerd_pid" || true; return 0; }
            sleep 0.5
        done
        kill -KILL "$dockerd_pid" 2>/dev/null || true
    }
    trap stop_engine EXIT
    for _ in $(seq 120); do
        engine_answers && break
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    engine_answers || skip "dockerd did not start: $(tail -n 5 "$log" | tr '\n' ' ')"
    echo "with-engine: started dockerd (pid $dockerd_pid, log $log)" >&2
fi

# Not exec: the trap above stops the engine this script started once the command is done.
"$@"
