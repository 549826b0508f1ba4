# Shared settings of the testbed scripts (sourced). Everything is overridable by environment.
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TESTBED_DIR=${ORDERPIPE_TESTBED_DIR:-$REPO/.testbed}
KAFKA_PORT=${KAFKA_PORT:-9092}
CQL_PORT=${CQL_PORT:-9042}
export REPO TESTBED_DIR KAFKA_PORT CQL_PORT
mkdir -p "$TESTBED_DIR/run" "$TESTBED_DIR/log"

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive FILE [PATTERN]: the process recorded in FILE runs (and its command line contains
# PATTERN, so that a pid reused by an unrelated process is never taken for ours, nor killed).
pid_alive() {
    local pid cmd
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [ -z "${2:-}" ] && return 0
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$2"* ]]
}

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid FILE NAME [PATTERN]: SIGTERM the recorded process, SIGKILL after 30 s, remove FILE.
stop_pid() {
    local file=$1 name=$2 pid i
    if pid_alive "$file" "${3:-}"; then
        pid=$(cat "$file")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 30 s: SIGKILL"
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

# wait_probe KIND ADDR SECONDS LOGFILE [ARG]: wait for a real protocol handshake (probe.py).
wait_probe() {
    local kind=$1 addr=$2 secs=$3 logfile=$4 i
    for i in $(seq $((secs * 10))); do
        python3 "$REPO/ops/testbed/probe.py" "$kind" "$addr" ${5:+"$5"} && return 0
        sleep 0.1
    done
    log "$kind did not answer on $addr within $secs s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

# need_debian_package COMMAND PACKAGE: COMMAND is on the PATH; installed from Debian when missing and
# we may (root with apt-get), so that a fresh machine needs no step by hand.
need_debian_package() {
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing $2 (for $1)"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2"; } \
            >"$TESTBED_DIR/log/apt.log" 2>&1 || { tail -n 20 "$TESTBED_DIR/log/apt.log" >&2; die "installing $2 failed"; }
    fi
    command -v "$1" >/dev/null || die "$1 not found: install $2"
}

# java_bin: the JVM the servers run on (Java 17 is what both are pinned for).
java_bin() {
    if [ -n "${JAVA_HOME:-}" ]; then echo "$JAVA_HOME/bin/java"; return; fi
    need_debian_package java openjdk-17-jre-headless
    echo java
}

# maven_jars POM DEST: DEST holds the jars POM pins, with their dependencies. Fetched from Maven
# Central once; offline afterwards (a stamp records which pom the jars came from).
maven_jars() {
    local pom=$1 dest=$2 stamp
    stamp=$(sha256sum "$pom" | cut -d' ' -f1)
    [ -f "$dest/.pom-sha256" ] && [ "$(cat "$dest/.pom-sha256")" = "$stamp" ] && return 0
    need_debian_package mvn maven
    log "fetching the jars of $pom into $dest (once)"
    rm -rf "$dest.tmp"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest.tmp" \
        >"$TESTBED_DIR/log/maven.log" 2>&1 || { tail -n 30 "$TESTBED_DIR/log/maven.log" >&2; die "mvn failed"; }
    echo "$stamp" >"$dest.tmp/.pom-sha256"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
}
