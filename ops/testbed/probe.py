#!/usr/bin/env python3
"""Real protocol handshakes, used by the testbed scripts to decide that a server is up.

    probe.py kafka HOST:PORT [N]  Kafka ApiVersions, then Metadata; ok when the broker lists at
                                  least N (default 1) live brokers, i.e. it has joined its cluster
    probe.py cql HOST:PORT [V]    CQL OPTIONS frame (protocol V, default 4); ok on SUPPORTED

Exit 0 when the server answered correctly, 1 otherwise. An open port alone is not enough:
a broker still loading its log, or a CQL server still bootstrapping, accepts connections early.
"""
import socket
import struct
import sys


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kafka_request(sock, api_key, version, correlation_id, body):
    client_id = b"orderpipe-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    payload = recv_exact(sock, size)
    if struct.unpack(">i", payload[:4])[0] != correlation_id:
        raise ConnectionError("unexpected correlation id")
    return payload[4:]


def kafka(sock, brokers):
    # ApiVersions v0 (every broker answers it): error_code, then [api_key, min, max] per API.
    answer = kafka_request(sock, 18, 0, 1, b"")
    error_code, count = struct.unpack(">hi", answer[:6])
    if error_code != 0:
        return False
    versions = {}
    for i in range(count):
        key, low, high = struct.unpack(">hhh", answer[6 + 6 * i : 12 + 6 * i])
        versions[key] = (low, high)
    # Metadata (api 3), a non-flexible version from 4 to 8: throttle_time_ms, then the brokers
    # array. A KRaft broker lists only registered, unfenced brokers, so the count says the
    # cluster is formed. Request: all topics (null), no auto-creation (+ two flags from v8).
    low, high = versions.get(3, (99, -1))
    version = max(low, 4)
    if version > min(high, 8):
        return False
    body = struct.pack(">ib", -1, 0) + (b"\x00\x00" if version >= 8 else b"")
    answer = kafka_request(sock, 3, version, 2, body)
    _throttle, live = struct.unpack(">ii", answer[:8])
    return live >= brokers


def cql(sock, version):
    # header: version, flags, stream (int16), opcode OPTIONS (0x05), body length 0
    sock.sendall(struct.pack(">BBhBi", version, 0, 1, 0x05, 0))
    header = recv_exact(sock, 9)
    _, _, stream, opcode, length = struct.unpack(">BBhBi", header)
    recv_exact(sock, length)
    return stream == 1 and opcode == 0x06  # SUPPORTED


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("kafka", "cql"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[2].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.settimeout(3)
            if sys.argv[1] == "kafka":
                ok = kafka(sock, int(sys.argv[3]) if len(sys.argv) > 3 else 1)
            else:
                ok = cql(sock, int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    except (OSError, ConnectionError, struct.error):
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
