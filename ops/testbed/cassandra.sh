# The testbed's CQL server (sourced, defines functions only): Apache Cassandra, pinned in
# ops/testbed/cassandra/pom.xml, jars from Maven Central, on the machine's Java 17. It speaks native
# protocol v4/v5, so the `scylla` driver talks to it directly on 127.0.0.1:$CQL_PORT.
# Production runs ScyllaDB: keep CQL to what both accept (see shared/TESTBED.md).
#
#   cql_install   jars into $TESTBED_DIR/cassandra/libs (cached; offline once fetched)
#   cql_start     start it; return when it answers a CQL OPTIONS handshake
#   cql_stop      stop it, wait until its port is closed
#   cql_running   it runs
#   cql_status    one line
#
# Variables (all optional): CQL_PORT (9042), CASSANDRA_STORAGE_PORT (7010), CASSANDRA_HEAP (768m).
CASSANDRA_HOME=$TESTBED_DIR/cassandra
CASSANDRA_LIBS=$CASSANDRA_HOME/libs
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7010}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-768m}
CASSANDRA_PID=$TESTBED_DIR/run/cassandra.pid
CASSANDRA_LOG=$TESTBED_DIR/log/cassandra.log
_cql_main=org.apache.cassandra.service.CassandraDaemon

cql_install() { maven_jars "$REPO/ops/testbed/cassandra/pom.xml" "$CASSANDRA_LIBS"; }

cql_running() { pid_alive "$CASSANDRA_PID" "$_cql_main"; }

_cql_config() {
    local data=$CASSANDRA_HOME/data
    cat >"$CASSANDRA_HOME/conf/cassandra.yaml" <<YAML
cluster_name: orderpipe-testbed
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CQL_PORT
start_native_transport: true
commitlog_sync: periodic
commitlog_sync_period: 10000ms
data_file_directories: [$data/data]
commitlog_directory: $data/commitlog
saved_caches_directory: $data/saved_caches
hints_directory: $data/hints
cdc_raw_directory: $data/cdc_raw
# Tests drop hundreds of throw-away keyspaces: no snapshot of each.
auto_snapshot: false
YAML
    cat >"$CASSANDRA_HOME/conf/logback.xml" <<'XML'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
XML
}

cql_start() {
    local addr=127.0.0.1:$CQL_PORT
    if cql_running; then
        wait_probe cql "$addr" 120 "$CASSANDRA_LOG" || return 1
        log "CQL server already running on $addr (pid $(cat "$CASSANDRA_PID"))"
        return 0
    fi
    port_open "$CQL_PORT" && die "port $CQL_PORT is taken by a process the testbed did not start; stop it or set CQL_PORT"
    cql_install
    mkdir -p "$CASSANDRA_HOME/conf" "$CASSANDRA_HOME/data"
    _cql_config
    # JVM flags from Cassandra's own conf/jvm17-server.options (module access it needs on Java 17).
    setsid nohup "$(java_bin)" -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k -XX:+UseG1GC \
        -XX:+ExitOnOutOfMemoryError -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED --add-exports java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports java.sql/java.sql=ALL-UNNAMED --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
        --add-opens java.base/java.lang.module=ALL-UNNAMED --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
        --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED \
        -Dcassandra.config="file://$CASSANDRA_HOME/conf/cassandra.yaml" \
        -Dlogback.configurationFile="$CASSANDRA_HOME/conf/logback.xml" \
        -Dcassandra-foreground=yes -Dcassandra.storagedir="$CASSANDRA_HOME/data" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -cp "$CASSANDRA_HOME/conf:$CASSANDRA_LIBS/*" "$_cql_main" >>"$CASSANDRA_LOG" 2>&1 </dev/null &
    echo $! >"$CASSANDRA_PID"
    wait_probe cql "$addr" 120 "$CASSANDRA_LOG" || { cql_stop; return 1; }
    log "CQL server (Apache Cassandra) ready on $addr (pid $(cat "$CASSANDRA_PID"))"
}

cql_stop() {
    stop_pid "$CASSANDRA_PID" "CQL server" "$_cql_main"
    wait_port_closed "$CQL_PORT"
}

cql_status() {
    if cql_running; then
        echo "cassandra    pid $(cat "$CASSANDRA_PID")  127.0.0.1:$CQL_PORT  running"
    else
        echo "cassandra    -          127.0.0.1:$CQL_PORT  stopped"
    fi
}
