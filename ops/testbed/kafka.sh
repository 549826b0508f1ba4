# The testbed's broker (sourced, defines functions only): Apache Kafka in KRaft mode, pinned in
# ops/testbed/kafka/pom.xml, jars from Maven Central, on the machine's Java 17. One combined
# broker+controller node by default; `KAFKA_BROKERS=3` (or `ops/testbed/up --brokers 3`) runs three
# on loopback with replication factor 3 and min.insync.replicas=2, for tests that stop a broker.
#
#   kafka_install             jars into $TESTBED_DIR/kafka/libs (cached; offline once fetched)
#   kafka_start               format storage on first start, start every node, return when each
#                             answers a Metadata request listing all nodes as live brokers
#   kafka_stop                stop every node this testbed started, wait until their ports close
#   kafka_node_stop I / kafka_node_start I   one node (for broker-failure tests)
#   kafka_running             some node of ours runs
#   kafka_bootstrap           the bootstrap list of the cluster
#   kafka_status              one line per node
#
# Ports: node I serves clients on KAFKA_PORT+I-1 (9092, 9093, 9094) and its controller on
# KAFKA_CONTROLLER_PORT+I-1 (9192, ...). KAFKA_HEAP (512m) per node. KAFKA_LIBS: the jars (a test
# running a broker of its own points it at the main testbed's, to skip the copy).
KAFKA_HOME=$TESTBED_DIR/kafka
KAFKA_LIBS=${KAFKA_LIBS:-$KAFKA_HOME/libs}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9192}
KAFKA_HEAP=${KAFKA_HEAP:-512m}

_kafka_size_file=$KAFKA_HOME/cluster-size
_kafka_pidfile() { echo "$TESTBED_DIR/run/kafka-$1.pid"; }
_kafka_log() { echo "$TESTBED_DIR/log/kafka-$1.log"; }
_kafka_dir() { echo "$KAFKA_HOME/node-$1"; }
_kafka_port() { echo $((KAFKA_PORT + $1 - 1)); }
_kafka_size() { cat "$_kafka_size_file" 2>/dev/null || echo "${KAFKA_BROKERS:-1}"; }

kafka_bootstrap() {
    local n i list=()
    n=$(_kafka_size)
    for i in $(seq "$n"); do list+=("127.0.0.1:$(_kafka_port "$i")"); done
    (IFS=,; echo "${list[*]}")
}

kafka_running() {
    local i
    for i in 1 2 3 4 5; do pid_alive "$(_kafka_pidfile "$i")" kafka.Kafka && return 0; done
    return 1
}

kafka_install() { maven_jars "$REPO/ops/testbed/kafka/pom.xml" "$KAFKA_LIBS"; }

# _kafka_config I N: server.properties of node I in a cluster of N.
_kafka_config() {
    local i=$1 n=$2 voters=() j rf isr
    for j in $(seq "$n"); do voters+=("$j@127.0.0.1:$((KAFKA_CONTROLLER_PORT + j - 1))"); done
    rf=$((n < 3 ? n : 3))
    isr=$((rf > 1 ? 2 : 1))
    cat <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$(_kafka_port "$i"),CONTROLLER://127.0.0.1:$((KAFKA_CONTROLLER_PORT + i - 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$(_kafka_port "$i")
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$(_kafka_dir "$i")/data
# What a production cluster has where it matters to the pipeline: every internal topic (group
# offsets, transaction state) and every topic replicated $rf-fold, acks=all needing $isr in sync.
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
# Fewer internal partitions than the default 50: created faster on first use, same semantics.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
# Tests join groups all the time: no 3 s wait for more members before the first assignment.
group.initial.rebalance.delay.ms=0
# Quick clean shutdown: one node, nothing to move leadership to.
controlled.shutdown.enable=$([ "$n" -gt 1 ] && echo true || echo false)
PROPS
}

# _kafka_jvm: the JVM command line on the Kafka jars, into the array KAFKA_JVM.
_kafka_jvm() {
    KAFKA_JVM=("$(java_bin)" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties"
        -cp "$KAFKA_LIBS/*")
}

kafka_node_start() {
    local i=$1 n dir pidfile
    n=$(_kafka_size); dir=$(_kafka_dir "$i"); pidfile=$(_kafka_pidfile "$i")
    pid_alive "$pidfile" kafka.Kafka && return 0
    port_open "$(_kafka_port "$i")" &&
        die "port $(_kafka_port "$i") is taken by a process the testbed did not start; stop it or set KAFKA_PORT"
    mkdir -p "$dir"
    _kafka_jvm
    _kafka_config "$i" "$n" >"$dir/server.properties"
    if [ ! -f "$dir/data/meta.properties" ]; then
        "${KAFKA_JVM[@]}" kafka.tools.StorageTool format --ignore-formatted --cluster-id="$(cat "$KAFKA_HOME/cluster-id")" \
            -c "$dir/server.properties" >>"$(_kafka_log "$i")" 2>&1 || die "formatting node $i failed (see $(_kafka_log "$i"))"
    fi
    setsid nohup "${KAFKA_JVM[@]}" kafka.Kafka "$dir/server.properties" >>"$(_kafka_log "$i")" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

kafka_node_stop() {
    stop_pid "$(_kafka_pidfile "$1")" "broker $1" kafka.Kafka
    wait_port_closed "$(_kafka_port "$1")"
}

kafka_start() {
    local n=${KAFKA_BROKERS:-1} i
    if kafka_running; then
        [ "$(_kafka_size)" = "$n" ] || die "a $(_kafka_size)-node cluster runs; ops/testbed/down before starting $n nodes"
    else
        kafka_install
        mkdir -p "$KAFKA_HOME"
        if [ "$(cat "$_kafka_size_file" 2>/dev/null)" != "$n" ]; then
            # Data formatted for another cluster size cannot join this one: start afresh.
            rm -rf "$KAFKA_HOME"/node-* "$KAFKA_HOME/cluster-id"
            echo "$n" >"$_kafka_size_file"
        fi
        [ -f "$KAFKA_HOME/cluster-id" ] ||
            python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' >"$KAFKA_HOME/cluster-id"
        cat >"$KAFKA_HOME/log4j2.properties" <<'LOG'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
LOG
    fi
    for i in $(seq "$n"); do kafka_node_start "$i"; done
    for i in $(seq "$n"); do
        # Ready = the node answers Metadata and lists every node as a live (unfenced) broker.
        wait_probe kafka "127.0.0.1:$(_kafka_port "$i")" 90 "$(_kafka_log "$i")" "$n" || { kafka_stop; return 1; }
    done
    log "Apache Kafka ready: $n node(s) on $(kafka_bootstrap)"
}

kafka_stop() {
    local i
    for i in $(seq 5); do
        [ -f "$(_kafka_pidfile "$i")" ] || continue
        kafka_node_stop "$i"
    done
}

kafka_status() {
    local i n
    n=$(_kafka_size)
    for i in $(seq "$n"); do
        if pid_alive "$(_kafka_pidfile "$i")" kafka.Kafka; then
            echo "kafka-$i      pid $(cat "$(_kafka_pidfile "$i")")  127.0.0.1:$(_kafka_port "$i")  running"
        else
            echo "kafka-$i      -          127.0.0.1:$(_kafka_port "$i")  stopped"
        fi
    done
}
