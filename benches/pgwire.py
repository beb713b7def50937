"""A minimal PostgreSQL client for the benches: trust or SCRAM-SHA-256, the simple query protocol,
and a deadline on every call. The failover writer must give up on a commit after 1 s without a
statement_timeout (a cancelled wait for the sync standby would report the commit as done), which
needs a deadline on the socket itself; and python3 here may have no psycopg at all.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import time

PROTOCOL_3_0 = 196608


class PgError(Exception):
    """The server said no (ErrorResponse), or asked for a password this client cannot give."""


class Session:
    """One connection. host is a socket directory (starts with /) or an address."""

    def __init__(self, host, port, timeout, user="postgres", dbname="postgres", password=None):
        if host.startswith("/"):
            sock, address = socket.socket(socket.AF_UNIX), os.path.join(host, f".s.PGSQL.{port}")
        else:
            sock, address = socket.socket(), (host, port)
        self.sock, self.buf, self.ready, self.password, self.scram = sock, b"", False, password, None
        self.deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                              (("user", user), ("database", dbname), ("application_name", "failover-bench")))
            params += b"\0"
            sock.sendall(struct.pack("!ii", 8 + len(params), PROTOCOL_3_0) + params)
            self._until_ready()
        except BaseException:
            sock.close()
            raise

    def query(self, sql, timeout):
        """Rows (lists of str or None) of a simple query; socket.timeout when it takes longer."""
        self.deadline = time.monotonic() + timeout
        body = sql.encode() + b"\0"
        self.sock.settimeout(timeout)
        self.sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
        return self._until_ready()

    def close(self):
        self.sock.close()

    def _until_ready(self):
        rows, error = [], None
        while True:
            tag, body = self._message()
            if tag == b"R":
                (code,) = struct.unpack("!i", body[:4])
                if code in (10, 11, 12) and self.password is not None:
                    self._scram(code, body[4:])
                elif code != 0:
                    raise PgError(f"the server asks for a password (auth request {code}) and the bench "
                                  "has none for it")
            elif tag == b"D":
                rows.append(_data_row(body))
            elif tag == b"E":
                error = _error_message(body)
                # Before the first ReadyForQuery an error ends the connection.
                if not self.ready:
                    raise PgError(error)
            elif tag == b"Z":
                self.ready = True
                if error:
                    raise PgError(error)
                return rows

    def _scram(self, code, data):
        """SCRAM-SHA-256 (RFC 5802/7677) without channel binding: 10 lists the mechanisms, 11 is
        the server's first message, 12 its final one (checked)."""
        if code == 10:
            if b"SCRAM-SHA-256" not in data.split(b"\0"):
                raise PgError("the server offers no SCRAM-SHA-256")
            nonce = base64.b64encode(os.urandom(18)).decode()
            self.scram = {"bare": f"n=,r={nonce}", "nonce": nonce}
            first = ("n,," + self.scram["bare"]).encode()
            body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
            self.sock.sendall(b"p" + struct.pack("!i", 4 + len(body)) + body)
        elif code == 11:
            fields = dict(f.split("=", 1) for f in data.decode().split(","))
            if not fields["r"].startswith(self.scram["nonce"]):
                raise PgError("the server's SCRAM nonce does not extend ours")
            salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(fields["s"]),
                                         int(fields["i"]))
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            without_proof = f"c=biws,r={fields['r']}"
            message = f"{self.scram['bare']},{data.decode()},{without_proof}".encode()
            signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
            proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
            server_key = hmac.digest(salted, b"Server Key", "sha256")
            self.scram["verifier"] = base64.b64encode(hmac.digest(server_key, message, "sha256")).decode()
            final = f"{without_proof},p={proof}".encode()
            self.sock.sendall(b"p" + struct.pack("!i", 4 + len(final)) + final)
        elif data.decode() != f"v={self.scram['verifier']}":
            raise PgError("the server's SCRAM signature is wrong")

    def _message(self):
        header = self._read(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], self._read(length - 4)

    def _read(self, n):
        while len(self.buf) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _data_row(body):
    (count,) = struct.unpack("!h", body[:2])
    at, row = 2, []
    for _ in range(count):
        (length,) = struct.unpack("!i", body[at:at + 4])
        at += 4
        if length < 0:
            row.append(None)
        else:
            row.append(body[at:at + length].decode())
            at += length
    return row


def _error_message(body):
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"


def query_once(host, port, sql, timeout=2.0, password=None):
    """Rows of one query on a new connection; None when the server cannot be reached or refuses."""
    try:
        session = Session(host, port, timeout, password=password)
    except (OSError, PgError):
        return None
    try:
        return session.query(sql, timeout)
    except (OSError, PgError):
        return None
    finally:
        session.close()
