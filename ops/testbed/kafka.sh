# Kafka-protocol broker of the testbed: noida-db, pinned, from PyPI, in a venv (sourced).
# See shared/TESTBED.md for why this broker and what it does and does not enforce.
NOIDA_VERSION=0.2.3
KAFKA_VENV=$TESTBED_DIR/kafka/venv
KAFKA_DATA=$TESTBED_DIR/kafka/data
KAFKA_PID=$TESTBED_DIR/run/kafka.pid
KAFKA_LOG=$TESTBED_DIR/log/kafka.log

kafka_bin() {
    "$KAFKA_VENV/bin/python" -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))'
}

kafka_install() {
    if [ -x "$KAFKA_VENV/bin/python" ] && "$KAFKA_VENV/bin/pip" show noida-db 2>/dev/null | grep -qx "Version: $NOIDA_VERSION"; then
        return 0
    fi
    log "installing noida-db $NOIDA_VERSION into $KAFKA_VENV"
    python3 -m venv "$KAFKA_VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$KAFKA_VENV/bin/pip" install --quiet --disable-pip-version-check "noida-db==$NOIDA_VERSION"
}

kafka_start() {
    local addr=127.0.0.1:$KAFKA_PORT
    if pid_alive "$KAFKA_PID" && python3 "$REPO/ops/testbed/probe.py" kafka "$addr"; then
        log "broker already running on $addr (pid $(cat "$KAFKA_PID"))"
        return 0
    fi
    if port_open "$KAFKA_PORT"; then
        die "port $KAFKA_PORT is taken by a process the testbed did not start; stop it or set KAFKA_PORT"
    fi
    kafka_install
    mkdir -p "$KAFKA_DATA"
    # Run the binary itself, not the Python console script: killing the wrapper would leave the broker.
    setsid nohup "$(kafka_bin)" start --only kafka --kafka-port "$KAFKA_PORT" --data-dir "$KAFKA_DATA" \
        >"$KAFKA_LOG" 2>&1 </dev/null &
    echo $! >"$KAFKA_PID"
    wait_probe kafka "$addr" 60 "$KAFKA_LOG" || { kafka_stop; return 1; }
    log "broker ready on $addr (pid $(cat "$KAFKA_PID"))"
}

kafka_stop() {
    # SIGTERM is graceful: the broker flushes its data file first.
    stop_pid "$KAFKA_PID" broker
    wait_port_closed "$KAFKA_PORT"
}

kafka_status() {
    if pid_alive "$KAFKA_PID"; then
        echo "broker       pid $(cat "$KAFKA_PID")  127.0.0.1:$KAFKA_PORT  running"
    else
        echo "broker       -          127.0.0.1:$KAFKA_PORT  stopped"
    fi
}
