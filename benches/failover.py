#!/usr/bin/env python3
"""Failover time side by side: pgrepl agents (their default settings) against Patroni 3.0.2 on
the same machine, the same 3-member etcd 3.4, three PostgreSQL 15 nodes each with synchronous
replication (pgrepl: `FIRST 1 (pg_slave, pg_asyncslave)`; Patroni: `synchronous_mode: true`),
the same writer and the same faults:

    benches/failover.py [--rounds 3] [--patroni-settings defaults,current-min,3.0.2-min] [--quick]
                        [--through hosts|haproxy|uri]
    benches/failover.py --tls-compare [--rounds 5]

Needs `cargo build --release --bin pgrepl`, Debian's `patroni` and `etcd-server`; run as root
(the servers and Patroni run as OS user postgres).

Faults, each round both tools in alternating order:
  node loss       SIGKILL the primary's agent (or Patroni) and its postgres, postmaster and children
  postgres crash  SIGKILL the primary's postgres only; the agent (or Patroni) lives on
The writer inserts one row every 50 ms into whichever node takes writes (it tries each node in
turn, starting after the one that last failed, as libpq does with a multi-host URI and
target_session_attrs=read-write; with --through haproxy it connects to the write port of an
HAProxy in front of each cluster, the same `pgrepl haproxy-config` configuration for both, its
checks asking pgrepl's agents or Patroni's REST API; with --through uri it is stock psql, libpq
itself choosing the node from a multi-host conninfo with target_session_attrs=read-write, one
psql session fed an INSERT every 50 ms and started again when it exits or stays silent; 1 s
per attempt, no statement_timeout) and records every acknowledged id and when. Time = from the kill to the first acknowledged write
through a session opened after the kill, on a new primary or the same one restarted. After each
run every acknowledged id must be on the primary the writer ended on (lost = missing ones).
Before each fault: a leader, its sync standby and the third node streaming from it, 1 s of
writes. After a node loss the killed agent (or Patroni) is started again and the node rejoins.

--tls-compare measures what TLS costs pgrepl instead: two pgrepl clusters side by side, one as
`up` makes it (TLS between the nodes, sslmode=verify-full) on an etcd that speaks TLS and wants
client certificates, one with `[tls] mode = "off"` on a plain etcd; the same faults, alternating.

Patroni settings rows (ttl / loop_wait / retry_timeout; each row gets a new Patroni cluster
under its own scope, as Patroni reads them from etcd, set at bootstrap). pgrepl's cluster is
built once and measured in every row, alternating with Patroni, so each row's ratio compares
runs taken under the same conditions.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
from harness import REPO, describe_run  # noqa: E402
from ha_clusters import Etcd, Haproxy, PatroniCluster, PgreplCluster  # noqa: E402
from pgwire import PgError, Session, query_once  # noqa: E402

ROWS = {
    "defaults": (30, 10, 10, "defaults"),
    "current-min": (20, 1, 3, "lowest that current Patroni accepts"),
    "3.0.2-min": (5, 1, 2, "lowest that 3.0.2 still fails over with"),
}
FAULTS = ("node loss", "postgres crash")
GOALS = {"node loss": 4.0, "postgres crash": 2.0}
# Through HAProxy (issue 20): the outage an application sees, checks included.
PROXY_GOALS = {"node loss": 3.5, "postgres crash": 3.5}
# Issue 13's anchor figures for Patroni 3.0.2, printed beside this run's.
ANCHOR = {("defaults", "node loss"): 24.1, ("defaults", "postgres crash"): 7.0,
          ("current-min", "node loss"): 19.8, ("current-min", "postgres crash"): 2.6,
          ("3.0.2-min", "node loss"): 5.2, ("3.0.2-min", "postgres crash"): 2.5}
# What pgrepl's agent sets on its own nodes (src/ha/agent.rs FAST_RECOVERY); --patroni-fast-recovery
# gives Patroni's nodes the same, to tell the tools' share from these settings' share.
FAST_RECOVERY = {"wal_retrieve_retry_interval": "200ms", "recovery_init_sync_method": "syncfs"}
INTERVAL, ATTEMPT = 0.05, 1.0
READY_LIMIT, WRITE_LIMIT = 300, 120
TABLE = "failover_bench"


class Ack(NamedTuple):
    id: int
    node: int
    at: float
    session: int


class Writer:
    """One INSERT every 50 ms into whichever node takes writes, each acknowledged id recorded.
    `targets` are the nodes themselves (tried in turn, as libpq with several hosts and
    target_session_attrs=read-write) or one proxy's write port; the node a session reached is
    known by its port."""

    def __init__(self, nodes, first_id, targets=None, password=None):
        self.nodes, self.next_id = nodes, first_id
        self.targets, self.password = targets or nodes, password
        self.acks, self.sessions = [], 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _connect(self, start):
        for target in ((start + k) % len(self.targets) for k in range(len(self.targets))):
            _, host, port = self.targets[target]
            try:
                session = Session(host, port, ATTEMPT, password=self.password)
            except (OSError, PgError):
                continue
            try:
                rows = session.query("SELECT NOT pg_is_in_recovery(), current_setting('port')", ATTEMPT)
                if rows and rows[0][0] == "t":
                    self.sessions += 1
                    node = [p for _, _, p in self.nodes].index(int(rows[0][1]))
                    return node, target, session
            except (OSError, PgError):
                pass
            session.close()
        return None

    def _loop(self):
        # Start after the node that last failed, as a client with several hosts does: a stranded
        # old primary may still say it takes writes.
        current, start = None, 0
        while not self.stopping.is_set():
            if current is None:
                current = self._connect(start)
            if current is not None:
                node, target, session = current
                row_id, self.next_id = self.next_id, self.next_id + 1
                try:
                    session.query(f"INSERT INTO {TABLE}(id) VALUES ({row_id})", ATTEMPT)
                    self.acks.append(Ack(row_id, node, time.monotonic(), self.sessions))
                except (OSError, PgError):
                    # Not acknowledged (an error, or no answer within 1 s): find the primary again.
                    session.close()
                    current, start = None, target + 1
            self.stopping.wait(INTERVAL)
        if current is not None:
            current[2].close()

    def wait(self, what, limit, pred):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            found = next((a for a in list(self.acks) if pred(a)), None)
            if found:
                return found
            time.sleep(0.01)
        raise RunFailed(f"no acknowledged write {what} within {limit} s")

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return list(self.acks)


class LibpqWriter(Writer):
    """The same writer as stock psql through libpq's own multi-host failover: one psql session
    with `host=A,B,C port=…,…,… target_session_attrs=read-write`, fed one INSERT every 50 ms on
    its stdin, each acknowledgement read from its stdout (line-buffered). A psql that exits (its
    server died, or libpq found no primary) or gives no answer within 1 s is killed and started
    again: a new session, libpq trying the hosts from the first."""

    def __init__(self, nodes, first_id, psql):
        hosts = ",".join(h for _, h, _ in nodes)
        ports = ",".join(str(p) for _, _, p in nodes)
        self.conninfo = (f"host={hosts} port={ports} user=postgres dbname=postgres connect_timeout=1 "
                         "target_session_attrs=read-write")
        self.psql = psql
        super().__init__(nodes, first_id)

    def _spawn(self):
        self.sessions += 1
        return subprocess.Popen(["stdbuf", "-oL", self.psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                                 self.conninfo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                env={k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGHOST")})

    def _loop(self):
        import select
        ports = [p for _, _, p in self.nodes]
        psql = None
        while not self.stopping.is_set():
            if psql is None or psql.poll() is not None:
                psql = self._spawn()
            row_id, self.next_id = self.next_id, self.next_id + 1
            answered = False
            try:
                psql.stdin.write(f"INSERT INTO {TABLE}(id) VALUES ({row_id}) RETURNING current_setting('port');\n")
                psql.stdin.flush()
                ready, _, _ = select.select([psql.stdout], [], [], ATTEMPT)
                line = psql.stdout.readline() if ready else ""
                if line.strip():
                    self.acks.append(Ack(row_id, ports.index(int(line.strip())), time.monotonic(), self.sessions))
                    answered = True
            except (OSError, ValueError):
                pass
            if not answered:
                psql.kill()
                psql.wait()
                psql = None
            self.stopping.wait(INTERVAL)
        if psql is not None:
            psql.kill()
            psql.wait()


class RunFailed(Exception):
    pass


class Result(NamedTuple):
    seconds: float
    old: str
    new: str
    acks: int
    lost: int
    load: float


def wait_ready(cluster, limit=READY_LIMIT):
    """The leader's index once it has its sync standby and the third node streaming."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        leader = cluster.ready()
        if leader is not None:
            return leader
        time.sleep(0.2)
    raise RunFailed(f"{cluster.label}: no leader with a streaming sync standby and third node within "
                    f"{limit} s\n{cluster.logs()}")


def missing(cluster, node, acks):
    """Acknowledged ids absent from node (None when it cannot be read)."""
    if not acks:
        return 0
    _, host, port = cluster.nodes[node]
    deadline = time.monotonic() + 5
    while True:
        rows = query_once(host, port, f"SELECT id FROM {TABLE} WHERE id BETWEEN {acks[0].id} AND {acks[-1].id}")
        if rows is not None:
            present = {int(r[0]) for r in rows}
            return sum(1 for a in acks if a.id not in present)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def measure(cluster, fault, first_id, proxy=None, psql=None):
    """One fault on the current primary, the writer through `proxy`'s write port, through stock
    `psql` (libpq's multi-host failover) or trying the nodes in turn; (Result, next free id)."""
    leader = wait_ready(cluster)
    targets = [("haproxy", "127.0.0.1", proxy.write_port)] if proxy else None
    if psql:
        writer = LibpqWriter(cluster.nodes, first_id, psql)
    else:
        writer = Writer(cluster.nodes, first_id, targets, getattr(cluster, "PASSWORD", None))
    try:
        writer.wait("before the fault", 10, lambda a: a.node == leader)
        time.sleep(1)
        before, load = writer.sessions, os.getloadavg()[0]
        killed = time.monotonic()
        if fault == "node loss":
            cluster.kill_node(leader)
        else:
            cluster.kill_postgres(leader)
        first = writer.wait("after the fault", WRITE_LIMIT, lambda a: a.at > killed and a.session > before)
        # Writes go on after the first one.
        writer.wait("after the first", 10, lambda a: a.at > first.at + 0.5)
    finally:
        acks = writer.stop()
        if cluster.procs[leader] is None:
            cluster.restore(leader)
    lost = missing(cluster, acks[-1].node, acks)
    if lost is None:
        raise RunFailed(f"{cluster.label}: cannot read the acknowledged ids back from "
                        f"{cluster.nodes[acks[-1].node][0]}")
    return Result(first.at - killed, cluster.nodes[leader][0], cluster.nodes[first.node][0], len(acks), lost,
                  load), writer.next_id


def fmt(values):
    return f"{statistics.median(values):.2f} s" if values else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patroni-settings", default=None,
                    help=f"which Patroni rows, comma-separated (default all: {','.join(ROWS)})")
    ap.add_argument("--faults", default="node-loss,postgres-crash", help="which faults (default both)")
    ap.add_argument("--quick", action="store_true",
                    help="1 round, the 3.0.2-min row only (unless --patroni-settings is given)")
    ap.add_argument("--patroni-fast-recovery", action="store_true",
                    help="give Patroni's nodes the two server settings pgrepl's agent sets on its own: "
                         + ", ".join(f"{k} = {v}" for k, v in FAST_RECOVERY.items()))
    ap.add_argument("--through", choices=("hosts", "haproxy", "uri"), default="hosts",
                    help="the writer tries the nodes in turn (default), goes through an HAProxy per cluster, "
                         "or is stock psql with a multi-host conninfo (libpq finds the primary)")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    ap.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin", help="PostgreSQL for both tools")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--pgrepl", default=os.path.join(target, "release", "pgrepl"))
    ap.add_argument("--patroni", default=shutil.which("patroni") or "/usr/bin/patroni")
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument("--workdir", default=None, help="parent of the work directory (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) afterwards")
    ap.add_argument("--tls-compare", action="store_true",
                    help="pgrepl with TLS (nodes and etcd) against pgrepl without, instead of Patroni")
    args = ap.parse_args()
    if args.tls_compare:
        return compare_tls(args)
    if args.quick:
        args.rounds = 1
    rows = (args.patroni_settings or ("3.0.2-min" if args.quick else ",".join(ROWS))).split(",")
    faults = [f.replace("-", " ") for f in args.faults.split(",")]
    for bad in [r for r in rows if r not in ROWS] + [f for f in faults if f not in FAULTS]:
        sys.exit(f"unknown row or fault `{bad}`: rows are {', '.join(ROWS)}; faults node-loss, postgres-crash")
    if os.geteuid() != 0:
        sys.exit("run as root: the servers and Patroni run as OS user postgres")
    tools = [("pgrepl", args.pgrepl), ("patroni", args.patroni), ("etcd", args.etcd)]
    if args.through == "haproxy":
        tools.append(("haproxy", args.haproxy))
    for tool, path in tools:
        if not os.path.exists(path):
            sys.exit(f"{tool} not found at {path}: build it (cargo build --release --bin pgrepl) or install it")

    work = tempfile.mkdtemp(prefix="pgrepl-failover-", dir=args.workdir)
    os.chmod(work, 0o755)
    versions = {t: subprocess.run([p, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
                for t, p in (("patroni", args.patroni), ("etcd", args.etcd))}
    for line in describe_run(work, args.pg_bin, args.pgrepl):
        print(line)
    print(f"{versions['patroni']}; {versions['etcd']}; rounds {args.rounds}; the machine is shared: "
          "the load average is printed with every run", flush=True)
    print("Patroni's nodes: " + (", ".join(f"{k} = {v}" for k, v in FAST_RECOVERY.items()) + " (as pgrepl's agent sets)"
                                 if args.patroni_fast_recovery else "PostgreSQL's defaults for recovery "
                                 "(pgrepl's agent sets wal_retrieve_retry_interval = 200ms, "
                                 "recovery_init_sync_method = syncfs on its own; see --patroni-fast-recovery)"))

    print("the writer " + {
        "haproxy": "goes through an HAProxy per cluster, `pgrepl haproxy-config`'s configuration "
                   "(checks every 500 ms, 250 ms in transition, fall 2, rise 1)",
        "uri": "is stock psql with a multi-host conninfo, target_session_attrs=read-write (libpq finds the primary)",
        "hosts": "tries the nodes in turn (as a multi-host URI does)"}[args.through])
    psql = os.path.join(args.pg_bin, "psql") if args.through == "uri" else None
    results, durations = {}, {}
    etcd = Etcd(work, args.etcd)
    pgrepl, proxies = None, {}
    try:
        started = time.monotonic()
        pgrepl = PgreplCluster(work, args.pgrepl, args.pg_bin, etcd)
        create_table(pgrepl)
        if args.through == "haproxy":
            proxies[pgrepl.label] = Haproxy(work, args.pgrepl, "pgrepl", pgrepl.nodes, pgrepl.apis, args.haproxy,
                                            ca=pgrepl.ca())
        print(f"pgrepl cluster up, agents leading in {time.monotonic() - started:.1f} s", flush=True)
        next_id = 1
        for row_index, row in enumerate(rows):
            ttl, loop_wait, retry_timeout, _ = ROWS[row]
            row_start = time.monotonic()
            patroni = PatroniCluster(work, args.pg_bin, etcd, row, ttl, loop_wait, retry_timeout, args.patroni,
                                     FAST_RECOVERY if args.patroni_fast_recovery else None)
            try:
                create_table(patroni)
                if args.through == "haproxy":
                    proxies[patroni.label] = Haproxy(work, args.pgrepl, f"patroni-{row}", patroni.nodes,
                                                     patroni.rest, args.haproxy)
                print(f"\n== Patroni {row}: ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout} "
                      f"(bootstrapped in {time.monotonic() - row_start:.1f} s) ==", flush=True)
                for r in range(args.rounds):
                    for f, fault in enumerate(faults):
                        order = (pgrepl, patroni) if (row_index + r + f) % 2 == 0 else (patroni, pgrepl)
                        for cluster in order:
                            try:
                                result, next_id = measure(cluster, fault, next_id, proxies.get(cluster.label),
                                                          psql)
                            except RunFailed as e:
                                print(f"[{row}] round {r + 1}, {fault}, {cluster.label}: FAILED: {e}", flush=True)
                                results.setdefault((row, fault, cluster.label), []).append(None)
                                next_id += 100_000
                                continue
                            results.setdefault((row, fault, cluster.label), []).append(result)
                            how = "restarted in place" if result.old == result.new else "new primary"
                            print(f"[{row}] round {r + 1}, {fault}, {cluster.label}: {result.seconds:.2f} s "
                                  f"({result.old} -> {result.new}, {how}), {result.acks} acknowledged, "
                                  f"{result.lost} lost, load {result.load:.2f}", flush=True)
            finally:
                if patroni.label in proxies:
                    proxies.pop(patroni.label).stop()
                patroni.stop()
            durations[row] = time.monotonic() - row_start
    finally:
        for proxy in proxies.values():
            proxy.stop()
        if pgrepl is not None:
            pgrepl.stop()
        etcd.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, faults, results, durations, GOALS if args.through == "hosts" else PROXY_GOALS)


def compare_tls(args):
    """pgrepl with TLS against pgrepl without, the faults alternating between the two clusters."""
    if os.geteuid() != 0:
        sys.exit("run as root: the servers run as OS user postgres")
    faults = [f.replace("-", " ") for f in args.faults.split(",")]
    work = tempfile.mkdtemp(prefix="pgrepl-failover-tls-", dir=args.workdir)
    os.chmod(work, 0o755)
    for line in describe_run(work, args.pg_bin, args.pgrepl):
        print(line)
    print(f"rounds {args.rounds}; TLS: the nodes' replication and pgrepl's sessions verify-full, etcd clients and "
          "peers over TLS with client certificates; plain: [tls] mode = \"off\", etcd over HTTP", flush=True)
    etcds, clusters, results = [], [], {}
    try:
        for tls in (True, False):
            label = "pgrepl TLS" if tls else "pgrepl plain"
            etcd = Etcd(work, args.etcd, name=f"etcd-{'tls' if tls else 'plain'}", tls=tls)
            etcds.append(etcd)
            clusters.append(PgreplCluster(work, args.pgrepl, args.pg_bin, etcd, label=label, tls=tls))
            create_table(clusters[-1])
        next_id = 1
        for r in range(args.rounds):
            for f, fault in enumerate(faults):
                order = clusters if (r + f) % 2 == 0 else list(reversed(clusters))
                for cluster in order:
                    try:
                        result, next_id = measure(cluster, fault, next_id)
                    except RunFailed as e:
                        print(f"round {r + 1}, {fault}, {cluster.label}: FAILED: {e}", flush=True)
                        results.setdefault((fault, cluster.label), []).append(None)
                        next_id += 100_000
                        continue
                    results.setdefault((fault, cluster.label), []).append(result)
                    print(f"round {r + 1}, {fault}, {cluster.label}: {result.seconds:.2f} s ({result.old} -> "
                          f"{result.new}), {result.acks} acknowledged, {result.lost} lost, load {result.load:.2f}",
                          flush=True)
    finally:
        for cluster in clusters:
            cluster.stop()
        for etcd in etcds:
            etcd.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| fault | pgrepl plain | pgrepl TLS | TLS / plain | lost per run (plain; TLS) |")
    print("|---|---|---|---|---|")
    for fault in faults:
        runs = {label: [x for x in results.get((fault, label), []) if x is not None]
                for label in ("pgrepl plain", "pgrepl TLS")}
        secs = {label: [x.seconds for x in rs] for label, rs in runs.items()}
        plain, tls = secs["pgrepl plain"], secs["pgrepl TLS"]
        ratio = f"{statistics.median(tls) / statistics.median(plain):.2f}x" if plain and tls else "-"
        each = lambda xs: " (" + ", ".join(f"{x:.2f}" for x in xs) + ")" if xs else ""  # noqa: E731
        lost = "; ".join("/".join(str(x.lost) for x in runs[label]) or "-" for label in runs)
        failed = sum(1 for label in runs for x in results.get((fault, label), []) if x is None)
        print(f"| {fault} | {fmt(plain)}{each(plain)} | {fmt(tls)}{each(tls)} | {ratio} | {lost}"
              + (f" ({failed} failed)" if failed else "") + " |")


def create_table(cluster):
    leader = wait_ready(cluster)
    _, host, port = cluster.nodes[leader]
    if query_once(host, port, f"CREATE TABLE IF NOT EXISTS {TABLE}(id bigint PRIMARY KEY)") is None:
        raise RunFailed(f"{cluster.label}: cannot create {TABLE} on {cluster.nodes[leader][0]}")


def report(rows, faults, results, durations, goals):
    def seconds(row, fault, tool):
        return [r.seconds for r in results.get((row, fault, tool), []) if r is not None]

    def lost(row, fault, tool):
        runs = results.get((row, fault, tool), [])
        failed = sum(1 for r in runs if r is None)
        text = "/".join(str(r.lost) for r in runs if r is not None) or "-"
        return text + (f" ({failed} failed)" if failed else "")

    print(f"\nmedians of the runs (each run's figure in brackets); load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| Patroni 3.0.2 settings | fault | Patroni | pgrepl (defaults) | Patroni / pgrepl | lost per run "
          "(Patroni; pgrepl) | Patroni in issue 13 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ttl, loop_wait, retry_timeout, name = ROWS[row]
        for fault in faults:
            p, g = seconds(row, fault, "Patroni"), seconds(row, fault, "pgrepl")
            ratio = f"{statistics.median(p) / statistics.median(g):.1f}x" if p and g else "-"
            runs = lambda xs: " (" + ", ".join(f"{x:.2f}" for x in xs) + ")" if xs else ""  # noqa: E731
            print(f"| {name} (ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout}) | {fault} | "
                  f"{fmt(p)}{runs(p)} | {fmt(g)}{runs(g)} | {ratio} | {lost(row, fault, 'Patroni')}; "
                  f"{lost(row, fault, 'pgrepl')} | {ANCHOR[(row, fault)]} s |")
    print()
    for row in rows:
        if row in durations:
            print(f"row {row}: {durations[row] / 60:.1f} min (Patroni bootstrap, runs of both tools, rejoins)")
    print()
    for fault in faults:
        all_g = [s for row in rows for s in seconds(row, fault, "pgrepl")]
        all_lost = [r.lost for row in rows for r in results.get((row, fault, "pgrepl"), []) if r is not None]
        failed = sum(1 for row in rows for r in results.get((row, fault, "pgrepl"), []) if r is None)
        if not all_g:
            continue
        med = statistics.median(all_g)
        ok = med <= goals[fault] and sum(all_lost) == 0 and failed == 0
        print(f"pgrepl {fault}: median {med:.2f} s over {len(all_g)} runs (min {min(all_g):.2f}, max "
              f"{max(all_g):.2f}), {sum(all_lost)} acknowledged commits lost, {failed} failed runs; goal <= "
              f"{goals[fault]:.1f} s and 0 lost: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
