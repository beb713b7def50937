#!/usr/bin/env python3
"""Side-by-side base backup benchmark: pgrepl vs the stock tools, in one run.

    benches/basebackup.py [--scale 50] [--rounds 3] [--pg-bin DIR]

Builds a pgbench database of the given scale on a local PostgreSQL (as OS user postgres when run
as root), then alternates, round by round:
  * pg_basebackup -Fp -Xstream into one target   vs  pgrepl basebackup into one target
  * pg_basebackup + cp -r into a second target   vs  pgrepl basebackup -D a -D b (one pass)
  * pg_basebackup --target=blackhole (the server alone, for reference)
and prints medians, ratios (pgrepl / stock, lower is better) and peak RSS of each client.
Every target is removed after it is measured; both tools write to the same filesystem and sync.
"""

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(argv):
    """Runs argv, returns (seconds, peak RSS in KiB) of that process.

    The peak is the kernel's high-water mark of the process's own memory (VmHWM), polled until
    it exits. getrusage's ru_maxrss is no use here: it carries over the RSS of whatever spawned
    the process (this Python interpreter, some 15 MiB) across exec, even with posix_spawn."""
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ])
        peak = 0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            peak = max(peak, high_water_kib(pid))
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"{' '.join(argv)} failed:\n{err.read().decode()}")
    return elapsed, peak


def high_water_kib(pid):
    """VmHWM of a running process; 0 once it has exited (a zombie has no memory left)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default=None, help="where the server and targets live (default: a temp dir)")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")
    bin_ = lambda tool: os.path.join(args.pg_bin, tool)

    work = tempfile.mkdtemp(prefix="pgrepl-bench-", dir=args.workdir)
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(work, pw.pw_uid, pw.pw_gid)
    data, port = os.path.join(work, "primary"), free_port()
    try:
        subprocess.run(as_postgres([bin_("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
                       "max_wal_senders = 10\nshared_buffers = 128MB\n")
        subprocess.run(as_postgres([bin_("pg_ctl"), "-D", data, "-l", os.path.join(work, "log"), "-w", "start"]),
                       check=True, stdout=subprocess.DEVNULL)
        conn = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        subprocess.run([bin_("pgbench"), "-i", "-q", "-s", str(args.scale)] + conn + ["postgres"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([bin_("psql")] + conn + ["-qc", "checkpoint", "postgres"], check=True)
        size = subprocess.run([bin_("psql")] + conn + ["-Atc", "select pg_size_pretty(sum(pg_database_size(oid))) from pg_database", "postgres"],
                              check=True, capture_output=True, text=True).stdout.strip()
        print(f"database size: {size}; {args.rounds} rounds, alternating order", flush=True)

        conninfo = f"host=127.0.0.1 port={port} user=postgres"
        a, b = os.path.join(work, "a"), os.path.join(work, "b")

        def clean():
            for d in (a, b):
                shutil.rmtree(d, ignore_errors=True)

        def stock_one():
            return run_measured([bin_("pg_basebackup")] + conn + ["-D", a, "-Fp", "-Xstream", "-c", "fast"])

        def pgrepl_one():
            return run_measured([args.pgrepl, "basebackup", "-d", conninfo, "-D", a, "-c", "fast"])

        def stock_two():
            t, rss = stock_one()
            start = time.monotonic()
            subprocess.run(["cp", "-r", a, b], check=True)
            subprocess.run(["sync", "-f", b], check=True)
            return t + time.monotonic() - start, rss

        def pgrepl_two():
            return run_measured([args.pgrepl, "basebackup", "-d", conninfo, "-D", a, "-D", b, "-c", "fast"])

        def blackhole():
            return run_measured([bin_("pg_basebackup")] + conn + ["--target=blackhole", "-Xnone", "-c", "fast"])

        cases = {"stock_one": stock_one, "pgrepl_one": pgrepl_one, "stock_two": stock_two,
                 "pgrepl_two": pgrepl_two, "blackhole": blackhole}
        results = {name: [] for name in cases}
        for round_ in range(args.rounds):
            order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
            for name in order:
                clean()
                results[name].append(cases[name]())
                clean()
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {results[n][-1][0]:.2f}s" for n in cases), flush=True)

        med = {n: statistics.median(t for t, _ in r) for n, r in results.items()}
        rss = {n: max(m for _, m in r) / 1024 for n, r in results.items()}
        print()
        print(f"{'case':<44}{'median s':>10}{'peak RSS MiB':>14}")
        labels = {"stock_one": "pg_basebackup -Fp -Xstream (1 target)", "pgrepl_one": "pgrepl basebackup (1 target)",
                  "stock_two": "pg_basebackup + cp -r (2 targets)", "pgrepl_two": "pgrepl basebackup -D a -D b (2 targets)",
                  "blackhole": "pg_basebackup --target=blackhole (server only)"}
        for n in cases:
            print(f"{labels[n]:<44}{med[n]:>10.2f}{rss[n]:>14.1f}")
        print()
        print(f"ratio one target  (pgrepl / pg_basebackup):       {med['pgrepl_one'] / med['stock_one']:.2f}x  (target <= 0.9x)")
        print(f"ratio two targets (pgrepl / pg_basebackup + cp):  {med['pgrepl_two'] / med['stock_two']:.2f}x  (target <= 0.6x)")
        print(f"server alone / pg_basebackup:                     {med['blackhole'] / med['stock_one']:.2f}x")
        print(f"pgrepl peak RSS: {max(rss['pgrepl_one'], rss['pgrepl_two']):.1f} MiB (target < 32 MiB)")
    finally:
        subprocess.run(as_postgres([bin_("pg_ctl"), "-D", data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
