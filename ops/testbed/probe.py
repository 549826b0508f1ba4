#!/usr/bin/env python3
"""Real protocol handshakes, used by the testbed scripts to decide that a server is up.

    probe.py kafka HOST:PORT      Kafka ApiVersions (v0) request; ok when error_code == 0
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


def kafka(sock):
    client_id = b"orderpipe-probe"
    # ApiVersions v0: api_key 18, api_version 0, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, 42, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    payload = recv_exact(sock, size)
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return correlation_id == 42 and error_code == 0


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
                ok = kafka(sock)
            else:
                ok = cql(sock, int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    except (OSError, ConnectionError, struct.error):
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
