# Shared settings of the testbed scripts (sourced). Everything is overridable by environment.
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TESTBED_DIR=${ORDERPIPE_TESTBED_DIR:-$REPO/.testbed}
KAFKA_PORT=${KAFKA_PORT:-9092}
CQL_PORT=${CQL_PORT:-9042}
CASSANDRA_PORT=${CASSANDRA_PORT:-9142}
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7010}
export REPO TESTBED_DIR KAFKA_PORT CQL_PORT CASSANDRA_PORT CASSANDRA_STORAGE_PORT
mkdir -p "$TESTBED_DIR/run" "$TESTBED_DIR/log"

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive FILE: the process recorded in FILE runs.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid FILE NAME: SIGTERM the recorded process, SIGKILL after 15 s, remove FILE.
stop_pid() {
    local file=$1 name=$2 pid i
    if pid_alive "$file"; then
        pid=$(cat "$file")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

# wait_port_closed PORT: up to 30 s.
wait_port_closed() {
    local i
    for i in $(seq 300); do port_open "$1" || return 0; sleep 0.1; done
    die "port $1 is still open"
}

# wait_probe KIND ADDR SECONDS LOGFILE: wait for a real protocol handshake.
wait_probe() {
    local kind=$1 addr=$2 secs=$3 logfile=$4 i
    for i in $(seq $((secs * 10))); do
        python3 "$REPO/ops/testbed/probe.py" "$kind" "$addr" && return 0
        sleep 0.1
    done
    log "$kind did not answer on $addr within $secs s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}
