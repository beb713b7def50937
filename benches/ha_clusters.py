"""The clusters benches/failover.py faults: a 3-member etcd on loopback, three PostgreSQL nodes run
by pgrepl agents, and three run by Patroni, both on that etcd under their own key prefixes.

Both cluster kinds offer the same calls: nodes (name, socket directory, port), leader(),
ready() (a leader, its sync standby streaming, the third node streaming too), kill_node(i)
(the agent or Patroni and postgres, SIGKILL together), kill_postgres(i), restore(i) (start the
killed agent or Patroni again, so the node rejoins), stop() and logs().
"""

import base64
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request

from harness import pick_port, tree
from pgwire import query_once


def chown_postgres(path, mode=0o700):
    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)


def postgres_pids(data):
    """The postmaster of data and its descendants, children first (as tests/it/support/ha/nodes.rs
    kills them), or [] when it is not running."""
    try:
        with open(os.path.join(data, "postmaster.pid")) as f:
            pid = int(f.readline())
    except (OSError, ValueError):
        return []
    return tree(pid)[::-1] if os.path.exists(f"/proc/{pid}") else []


def sigkill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def log_tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


class Etcd:
    """Three etcd members on loopback (etcd's default timing: 100 ms heartbeat, 1 s election).
    With tls: clients and peers over TLS, a client certificate from its own CA required (the
    transport `up` gives its own etcd; its auth and roles are left out: etcd's JSON gateway, which
    get() uses, cannot authenticate by certificate)."""

    def __init__(self, work, binary="/usr/bin/etcd", name="etcd", tls=False):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.client_ports = [pick_port() for _ in range(3)]
        peers = [pick_port() for _ in range(3)]
        initial = ",".join(f"etcd{i}={self.scheme}://127.0.0.1:{p}" for i, p in enumerate(peers))
        tls_args = self._certificates() if tls else []
        self.procs = []
        for i in range(3):
            client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
            peer = f"{self.scheme}://127.0.0.1:{peers[i]}"
            log = open(os.path.join(self.dir, f"etcd{i}.log"), "w")
            self.procs.append(subprocess.Popen(
                [binary, "--name", f"etcd{i}", "--data-dir", os.path.join(self.dir, f"etcd{i}"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "failover-bench"] + tls_args,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
            log.close()
        deadline = time.monotonic() + 30
        while not all(self.healthy(i) for i in range(3)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not become healthy in 30 s; see {self.dir}/etcd*.log")
            time.sleep(0.2)

    def _certificates(self):
        """A CA, one certificate for every member (127.0.0.1, server and client use) and a client's;
        the members' arguments."""
        f = {n: os.path.join(self.dir, n) for n in ("ca.crt", "ca.key", "member.crt", "member.key",
                                                    "client.crt", "client.key", "ext")}
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=bench etcd CA", "-keyout", f["ca.key"], "-out", f["ca.crt"])
        for leaf, cn, ext in (("member", "etcd", "subjectAltName=IP:127.0.0.1\n"
                               "extendedKeyUsage=serverAuth,clientAuth\n"),
                              ("client", "root", "extendedKeyUsage=clientAuth\n")):
            with open(f["ext"], "w") as e:
                e.write(ext)
            csr = os.path.join(self.dir, f"{leaf}.csr")
            openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", f"/CN={cn}", "-keyout", f[f"{leaf}.key"], "-out", csr)
            openssl("x509", "-req", "-in", csr, "-CA", f["ca.crt"], "-CAkey", f["ca.key"], "-CAcreateserial",
                    "-days", "2", "-extfile", f["ext"], "-out", f[f"{leaf}.crt"])
        self.ca, self.cert, self.key = f["ca.crt"], f["client.crt"], f["client.key"]
        self.context = ssl.create_default_context(cafile=self.ca)
        self.context.load_cert_chain(self.cert, self.key)
        args = []
        for prefix in ("--", "--peer-"):
            args += [f"{prefix}cert-file", f["member.crt"], f"{prefix}key-file", f["member.key"],
                     f"{prefix}trusted-ca-file", f["ca.crt"], f"{prefix}client-cert-auth"]
        return args

    def client_args(self):
        """What a pgrepl command needs besides --etcd."""
        return ["--etcd-ca", self.ca, "--etcd-cert", self.cert, "--etcd-key", self.key] if self.tls else []

    def _open(self, url, timeout, data=None):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=timeout, context=self.context if self.tls else None)

    def urls(self):
        return ",".join(f"{self.scheme}://127.0.0.1:{p}" for p in self.client_ports)

    def healthy(self, i):
        try:
            with self._open(f"{self.scheme}://127.0.0.1:{self.client_ports[i]}/health", 2) as r:
                return json.load(r).get("health") == "true"
        except (OSError, ValueError):
            return False

    def get(self, key):
        """A key's value through etcd's v3 JSON gateway, asking each member in turn; None if absent."""
        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        for port in self.client_ports:
            try:
                with self._open(f"{self.scheme}://127.0.0.1:{port}/v3/kv/range", 1, body) as r:
                    kvs = json.load(r).get("kvs", [])
            except (OSError, ValueError):
                continue
            return base64.b64decode(kvs[0]["value"]).decode() if kvs else None
        return None

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def streaming(node, names):
    """{application_name: sync_state} of the standbys streaming from node, None if it is no primary."""
    if query_once(node[1], node[2], "SELECT NOT pg_is_in_recovery()") != [["t"]]:
        return None
    rows = query_once(node[1], node[2], "SELECT application_name, sync_state FROM pg_stat_replication "
                                        "WHERE state = 'streaming'")
    if rows is None:
        return None
    return {name: state for name, state in rows if name in names}


class PgreplCluster:
    """`pgrepl up` of a 3-node local cluster (PostgreSQL 15, sync FIRST 1 of the two standbys, the
    recipe's defaults) and `pgrepl agent` per node with its default settings."""

    NAMES = ["pg_master", "pg_slave", "pg_asyncslave"]

    # The superuser's password over TCP (the proxy's sessions); on a socket it is trust.
    PASSWORD = "bench"

    def __init__(self, work, pgrepl, pg_bin, etcd, label="pgrepl", tls=True):
        """tls: the cluster's own TLS (`up`'s default); off writes `[tls] mode = "off"`."""
        self.pgrepl, self.pg_bin, self.etcd, self.label = pgrepl, pg_bin, etcd, label
        self.dir = os.path.join(work, label.replace(" ", "-"))
        os.makedirs(self.dir)
        chown_postgres(self.dir)
        self.file = os.path.join(self.dir, "pgrepl.toml")
        self._run(["init"])
        self.ports = [pick_port() for _ in range(3)]
        # Each agent's HTTP API, which a proxy's health checks ask.
        self.apis = [pick_port() for _ in range(3)]
        with open(self.file) as f:
            text = f.read()
        for default, port, api in zip((54320, 54321, 54322), self.ports, self.apis):
            text = text.replace(f"port = {default}", f'port = {port}\napi = "127.0.0.1:{api}"')
        password_file = os.path.join(self.dir, "superuser.password")
        with open(password_file, "w") as f:
            f.write(self.PASSWORD + "\n")
        with open(self.file, "w") as f:
            f.write(text + f'\n[local]\nsuperuser_password_file = "{password_file}"\n'
                    + ("" if tls else '\n[tls]\nmode = "off"\n'))
        self._run(["up", "--pg-bin", pg_bin])
        socket_dir = os.path.join(self.dir, ".pgrepl", "run")
        self.nodes = [(n, socket_dir, p) for n, p in zip(self.NAMES, self.ports)]
        self.procs = [None, None, None]
        for i in range(3):
            self.restore(i)

    def ca(self):
        """The cluster CA its agents' HTTPS API is checked with; None without TLS."""
        path = os.path.join(self.dir, ".pgrepl", "tls", "ca.crt")
        return path if os.path.exists(path) else None

    def _run(self, args):
        out = subprocess.run([self.pgrepl] + args + ["--cluster", self.file], capture_output=True, text=True,
                             env=_env_without("PGPASSWORD", "RUST_LOG"))
        if out.returncode != 0:
            raise RuntimeError(f"pgrepl {' '.join(args)} failed:\n{out.stderr}")

    def log(self, i):
        return os.path.join(self.dir, f"agent-{self.NAMES[i]}.log")

    def restore(self, i):
        with open(self.log(i), "a") as log:
            self.procs[i] = subprocess.Popen(
                [self.pgrepl, "-v", "agent", "--node", self.NAMES[i], "--cluster", self.file,
                 "--etcd", self.etcd.urls(), "--pg-bin", self.pg_bin, "--api", f"127.0.0.1:{self.apis[i]}"]
                + self.etcd.client_args(),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env=_env_without("PGPASSWORD", "RUST_LOG"))

    def _etcd_json(self, key):
        try:
            return json.loads(self.etcd.get(f"/pgrepl/pgrepl/{key}") or "null")
        except ValueError:
            return None

    def leader(self):
        record = self._etcd_json("leader")
        return self.NAMES.index(record["node"]) if record and record.get("node") in self.NAMES else None

    def ready(self):
        leader = self.leader()
        if leader is None or any(a is None or a.poll() is not None for a in self.procs):
            return None
        sync = self._etcd_json("sync")
        if not sync or sync.get("leader") != self.NAMES[leader]:
            return None
        others = [n for k, n in enumerate(self.NAMES) if k != leader]
        states = streaming(self.nodes[leader], others)
        if states is None or sorted(states) != sorted(others) or "sync" not in states.values():
            return None
        return leader

    def data(self, i):
        return os.path.join(self.dir, ".pgrepl", self.NAMES[i], "data")

    def kill_node(self, i):
        agent, victims = self.procs[i], postgres_pids(self.data(i))
        sigkill([agent.pid] + victims)
        agent.wait()
        self.procs[i] = None

    def kill_postgres(self, i):
        sigkill(postgres_pids(self.data(i)))

    def logs(self):
        return "\n".join(f"--- {self.log(i)}:\n{log_tail(self.log(i))}" for i in range(3))

    def stop(self):
        for agent in self.procs:
            if agent is not None:
                agent.kill()
                agent.wait()
        try:
            self._run(["down", "--purge"])
        except RuntimeError as e:
            print(f"warning: {e}")


class PatroniCluster:
    """Three `patroni` processes (as OS user postgres) with PostgreSQL 15, synchronous_mode: true
    and the given ttl, loop_wait and retry_timeout, on the etcd v3 API under their own scope."""

    label = "Patroni"

    def __init__(self, work, pg_bin, etcd, scope, ttl, loop_wait, retry_timeout, patroni="/usr/bin/patroni",
                 parameters=None):
        self.patroni, self.etcd = patroni, etcd
        self.dir = os.path.join(work, f"patroni-{scope}")
        self.run_dir = os.path.join(self.dir, "run")
        os.makedirs(self.run_dir)
        chown_postgres(self.dir)
        chown_postgres(self.run_dir)
        self.names = [f"patroni{i + 1}" for i in range(3)]
        self.ports = [pick_port() for _ in range(3)]
        self.nodes = [(n, self.run_dir, p) for n, p in zip(self.names, self.ports)]
        self.rest = [pick_port() for _ in range(3)]
        hba = ["local all all trust", "local replication all trust",
               "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
        for i in range(3):
            config = {
                "scope": scope, "namespace": "/patroni-bench/", "name": self.names[i],
                "restapi": {"listen": f"127.0.0.1:{self.rest[i]}", "connect_address": f"127.0.0.1:{self.rest[i]}"},
                "etcd3": {"hosts": [f"127.0.0.1:{p}" for p in etcd.client_ports]},
                "bootstrap": {"dcs": {
                    "ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry_timeout,
                    "maximum_lag_on_failover": 1048576, "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True, "use_slots": True,
                        "remove_data_directory_on_rewind_failure": True,
                        "remove_data_directory_on_diverged_timelines": True,
                        "parameters": {"wal_level": "replica", "wal_log_hints": "on", "wal_keep_size": "1GB",
                                       "max_wal_senders": 10, "max_replication_slots": 10}}}},
                "postgresql": {
                    "listen": f"127.0.0.1:{self.ports[i]}", "connect_address": f"127.0.0.1:{self.ports[i]}",
                    "data_dir": self.data(i), "bin_dir": pg_bin, "pgpass": os.path.join(self.dir, f"pgpass{i}"),
                    "authentication": {"superuser": {"username": "postgres", "password": "bench"},
                                       "replication": {"username": "replicator", "password": "bench"}},
                    "parameters": {"unix_socket_directories": self.run_dir, **(parameters or {})},
                    "pg_hba": hba},
            }
            # JSON is YAML: no yaml module needed here.
            with open(self.config(i), "w") as f:
                json.dump(config, f, indent=1)
            chown_postgres(self.config(i), 0o600)
        self.procs = [None, None, None]
        for i in range(3):
            self.restore(i)

    def config(self, i):
        return os.path.join(self.dir, f"{self.names[i]}.yml")

    def data(self, i):
        return os.path.join(self.dir, f"data-{self.names[i]}")

    def log(self, i):
        return os.path.join(self.dir, f"{self.names[i]}.log")

    def restore(self, i):
        with open(self.log(i), "a") as log:
            self.procs[i] = subprocess.Popen(
                [self.patroni, self.config(i)], user="postgres", group="postgres", extra_groups=[],
                cwd=self.dir, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir,
                                   "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def members(self):
        """Patroni's view of the cluster (GET /cluster on the first member that answers)."""
        for i, port in enumerate(self.rest):
            if self.procs[i] is None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=1) as r:
                    return json.load(r).get("members", [])
            except (OSError, ValueError):
                continue
        return []

    def leader(self):
        leaders = [m["name"] for m in self.members() if m.get("role") == "leader"]
        return self.names.index(leaders[0]) if leaders and leaders[0] in self.names else None

    def ready(self):
        members = self.members()
        if any(p is None or p.poll() is not None for p in self.procs) or len(members) != 3:
            return None
        leaders = [m["name"] for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        syncs = [m["name"] for m in members if m.get("role") == "sync_standby" and m.get("state") == "running"]
        if len(leaders) != 1 or len(syncs) != 1:
            return None
        leader = self.names.index(leaders[0])
        others = [n for k, n in enumerate(self.names) if k != leader]
        states = streaming(self.nodes[leader], others)
        if states is None or sorted(states) != sorted(others) or states.get(syncs[0]) != "sync":
            return None
        return leader

    def kill_node(self, i):
        proc, victims = self.procs[i], postgres_pids(self.data(i))
        sigkill([proc.pid] + victims)
        proc.wait()
        self.procs[i] = None

    def kill_postgres(self, i):
        sigkill(postgres_pids(self.data(i)))

    def logs(self):
        return "\n".join(f"--- {self.log(i)}:\n{log_tail(self.log(i))}" for i in range(3))

    def stop(self):
        # Patroni first, or it would start its postgres again.
        for i in range(3):
            if self.procs[i] is not None:
                self.procs[i].kill()
                self.procs[i].wait()
        for i in range(3):
            sigkill(postgres_pids(self.data(i)))


def _env_without(*names):
    return {k: v for k, v in os.environ.items() if k not in names}


class Haproxy:
    """Debian's HAProxy with `pgrepl haproxy-config`'s configuration in front of a cluster: for
    pgrepl's the file's nodes and agents; for Patroni's, a cluster file naming its nodes and REST
    APIs, so both get the very same configuration but for the addresses."""

    def __init__(self, work, pgrepl, label, nodes, apis, haproxy="/usr/sbin/haproxy", ca=None):
        """ca: the cluster CA of agents whose API is HTTPS (pgrepl's with TLS); None: plain
        checks (Patroni's REST API as the bench runs it)."""
        self.dir = os.path.join(work, f"haproxy-{label}")
        os.makedirs(self.dir)
        file = os.path.join(self.dir, "nodes.toml")
        subprocess.run([pgrepl, "init", "--cluster", file], check=True, capture_output=True)
        with open(file) as f:
            text = f.read()
        if ca:
            # haproxy-config names the CA where this file's state directory keeps it.
            os.makedirs(os.path.join(self.dir, ".pgrepl", "tls"))
            shutil.copy(ca, os.path.join(self.dir, ".pgrepl", "tls", "ca.crt"))
        else:
            text += '\n[tls]\nmode = "off"\n'
        for (default_name, default_port), (name, _, port), api in zip(
                (("pg_master", 54320), ("pg_slave", 54321), ("pg_asyncslave", 54322)), nodes, apis):
            # Quoted: the node's name and its place in the sync policy's list.
            text = text.replace(f'"{default_name}"', f'"{name}"')
            text = text.replace(f"port = {default_port}", f'port = {port}\napi = "127.0.0.1:{api}"')
        with open(file, "w") as f:
            f.write(text)
        self.write_port, read_port = pick_port(), pick_port()
        out = subprocess.run([pgrepl, "haproxy-config", "--cluster", file, "--write-port", str(self.write_port),
                              "--read-port", str(read_port)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"pgrepl haproxy-config failed:\n{out.stderr}")
        self.config = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(out.stdout)
        self.log = os.path.join(self.dir, "haproxy.log")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([haproxy, "-db", "-f", self.config], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
