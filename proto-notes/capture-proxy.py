#!/usr/bin/env python3
"""Tiny logging TCP proxy for the PostgreSQL wire protocol (pgrepl proto-notes).

Usage:
    capture-proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT OUT_DIR

Every accepted client connection N is relayed unchanged to the upstream server.
Both byte streams are split into protocol messages as they pass and written to

    OUT_DIR/connN.txt    human-readable: direction, tag, length, hexdump
                         (long messages are truncated in this file only)
    OUT_DIR/connN.jsonl  one JSON object per complete message:
                         {"seq", "t", "dir": "c2s"|"s2c", "tag", "hex"}

The client's first message (StartupMessage / SSLRequest / CancelRequest) has no
tag byte; it is logged with tag "" and the complete bytes.  If the client sends
an SSLRequest, the single-byte answer ('S'/'N') is logged with tag "ssl-answer";
after an 'S' the stream is TLS and is no longer decoded (logged raw).

Stdlib only; one thread per direction.  Stop it with Ctrl-C / SIGTERM.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

TRUNC = 160  # bytes of each message shown in the .txt file

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


def hexdump(data, limit=TRUNC):
    out = []
    shown = data[:limit]
    for off in range(0, len(shown), 16):
        chunk = shown[off:off + 16]
        hx = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"    {off:08x}  {hx:<47}  |{asc}|")
    if len(data) > limit:
        out.append(f"    ... ({len(data) - limit} more bytes)")
    return "\n".join(out)


class Splitter:
    """Incrementally cuts one direction of a connection into messages."""

    def __init__(self, direction, conn):
        self.dir = direction
        self.conn = conn
        self.buf = bytearray()
        # the client's first message is untagged; the server's first reply to
        # an SSLRequest/GSSENCRequest is a single byte
        self.untagged_next = direction == "c2s"
        self.raw = False

    def feed(self, data):
        self.buf += data
        while True:
            if self.raw:
                if self.buf:
                    self.conn.emit(self.dir, "raw", bytes(self.buf))
                    self.buf.clear()
                return
            if self.dir == "s2c" and self.conn.expect_ssl_answer:
                if not self.buf:
                    return
                b = bytes(self.buf[:1])
                del self.buf[:1]
                self.conn.expect_ssl_answer = False
                self.conn.emit(self.dir, "ssl-answer", b)
                if b in (b"S", b"G"):
                    self.raw = True
                    self.conn.c2s.raw = True
                continue
            if self.untagged_next:
                if len(self.buf) < 4:
                    return
                (length,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) < length:
                    return
                msg = bytes(self.buf[:length])
                del self.buf[:length]
                code = struct.unpack("!I", msg[4:8])[0] if length >= 8 else 0
                if code in (SSL_REQUEST, GSS_REQUEST):
                    self.conn.expect_ssl_answer = True  # next one untagged again
                else:
                    self.untagged_next = False
                self.conn.emit(self.dir, "", msg)
                continue
            if len(self.buf) < 5:
                return
            (length,) = struct.unpack("!I", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            msg = bytes(self.buf[:1 + length])
            del self.buf[:1 + length]
            self.conn.emit(self.dir, chr(msg[0]), msg)


class Conn:
    def __init__(self, n, out_dir):
        self.n = n
        self.lock = threading.Lock()
        self.seq = 0
        self.t0 = time.time()
        self.expect_ssl_answer = False
        self.txt = open(os.path.join(out_dir, f"conn{n}.txt"), "w")
        self.jsonl = open(os.path.join(out_dir, f"conn{n}.jsonl"), "w")
        self.c2s = Splitter("c2s", self)
        self.s2c = Splitter("s2c", self)

    def emit(self, direction, tag, msg):
        with self.lock:
            self.seq += 1
            t = time.time() - self.t0
            sub = ""
            if tag == "d" and len(msg) > 5:
                sub = f" copydata-type={chr(msg[5])!r}"
            arrow = "C->S" if direction == "c2s" else "S->C"
            self.txt.write(f"#{self.seq} {t:9.4f}s {arrow} tag={tag!r} "
                           f"bytes={len(msg)}{sub}\n{hexdump(msg)}\n")
            self.jsonl.write(json.dumps({"seq": self.seq, "t": round(t, 6),
                                         "dir": direction, "tag": tag,
                                         "hex": msg.hex()}) + "\n")

    def close(self):
        with self.lock:
            self.txt.close()
            self.jsonl.close()


def pump(src, dst, splitter, done):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            splitter.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        done.release()


def handle(client, n, upstream, out_dir):
    server = socket.create_connection(upstream)
    conn = Conn(n, out_dir)
    done = threading.Semaphore(0)
    threading.Thread(target=pump, args=(client, server, conn.c2s, done), daemon=True).start()
    threading.Thread(target=pump, args=(server, client, conn.s2c, done), daemon=True).start()
    done.acquire()
    done.acquire()
    client.close()
    server.close()
    conn.close()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    listen_port = int(sys.argv[1])
    upstream = (sys.argv[2], int(sys.argv[3]))
    out_dir = sys.argv[4]
    os.makedirs(out_dir, exist_ok=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(16)
    n = 0
    while True:
        client, _ = ls.accept()
        n += 1
        threading.Thread(target=handle, args=(client, n, upstream, out_dir), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
