#!/usr/bin/env python3
"""Every side-by-side comparison of pgrepl with the stock tools, on this machine, in one command:

    benches/compare.py [--rounds 3] [--scale 50] [--clients 8] [--duration 10] [--pg-bin DIR]
                       [--skip-basebackup]

Needs `cargo build --release` first. Prints medians over alternating rounds and ratios:
  1. basebackup vs pg_basebackup, and two targets vs pg_basebackup + cp -r: runs
     benches/basebackup.py (see its docstring) with the same --rounds, --scale and --pg-bin.
  2. receivewal vs pg_receivewal on the same slot backlog: 2 x rounds physical slots are created
     at one position, `pgbench -i -s SCALE` writes the backlog, then each tool drains its own
     slot into an empty directory up to the same -E position (both fsync). Reports MB/s, the
     ratio of times stock / pgrepl (above 1: pgrepl is faster; target >= 1, goal 2) and peak RSS
     (target < 32 MiB; the process's VmHWM, see run_measured in basebackup.py).
  3. `pgrepl bench --shape tpcb-like --modes async` vs plain `pgbench` (its default tpcb-like
     script) with the same clients and duration on the same tables. Reports TPS and the ratio
     stock / pgrepl (target <= 1.05, i.e. pgrepl reaches at least 0.95x pgbench's TPS).
The server is a fresh local cluster (as OS user postgres when run as root) with default
durability settings; it is removed afterwards.
"""

import argparse
import json
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from basebackup import as_postgres, free_port, run_measured  # noqa: E402


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale: the WAL backlog and the bench tables")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default=None, help="where the server and the archives live (default: a temp dir)")
    ap.add_argument("--skip-basebackup", action="store_true", help="leave out benches/basebackup.py")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")
    bin_ = lambda tool: os.path.join(args.pg_bin, tool)
    print(f"machine: {machine()}", flush=True)

    if not args.skip_basebackup:
        print("\n== basebackup (benches/basebackup.py) ==", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "basebackup.py"), "--rounds", str(args.rounds),
                        "--scale", str(args.scale), "--pg-bin", args.pg_bin, "--pgrepl", args.pgrepl]
                       + (["--workdir", args.workdir] if args.workdir else []), check=True)

    work = tempfile.mkdtemp(prefix="pgrepl-compare-", dir=args.workdir)
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(work, pw.pw_uid, pw.pw_gid)
    data, port = os.path.join(work, "primary"), free_port()
    conn = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    conninfo = f"host=127.0.0.1 port={port} user=postgres"

    def psql(sql):
        return subprocess.run([bin_("psql")] + conn + ["-XAtqc", sql, "postgres"], check=True,
                              capture_output=True, text=True).stdout.strip()

    try:
        subprocess.run(as_postgres([bin_("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
                       "max_wal_senders = 10\nmax_replication_slots = 20\nshared_buffers = 128MB\n"
                       "max_wal_size = 4GB\n")
        subprocess.run(as_postgres([bin_("pg_ctl"), "-D", data, "-l", os.path.join(work, "log"), "-w", "start"]),
                       check=True, stdout=subprocess.DEVNULL)

        # -- receivewal vs pg_receivewal -------------------------------------------------------
        print(f"\n== receivewal vs pg_receivewal ==", flush=True)
        slots = {(tool, r): f"{tool}_{r}" for tool in ("stock", "pgrepl") for r in range(args.rounds)}
        for slot in slots.values():
            psql(f"select pg_create_physical_replication_slot('{slot}', true)")
        print(f"pgbench -i -s {args.scale} (the backlog) ...", flush=True)
        subprocess.run([bin_("pgbench"), "-i", "-q", "-s", str(args.scale)] + conn + ["postgres"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        psql("select pg_switch_wal()")
        psql("checkpoint")
        end = psql("select pg_current_wal_lsn()")
        # WAL past the end, so that neither tool waits for the next record to see it reached.
        psql("select pg_switch_wal()")
        start = psql(f"select restart_lsn from pg_replication_slots where slot_name = '{slots[('stock', 0)]}'")
        backlog = int(psql(f"select pg_wal_lsn_diff('{end}', '{start}')"))
        print(f"backlog: {backlog / 2**20:.0f} MiB from {start} to {end}", flush=True)
        archive = os.path.join(work, "archive")

        def drain(tool, r):
            shutil.rmtree(archive, ignore_errors=True)
            os.mkdir(archive)
            slot = slots[(tool, r)]
            if tool == "stock":
                argv = [bin_("pg_receivewal")] + conn + ["-D", archive, "-S", slot, "-E", end, "--no-loop"]
            else:
                argv = [args.pgrepl, "receivewal", "-d", conninfo, "-D", archive, "-S", slot, "-E", end]
            result = run_measured(argv)
            shutil.rmtree(archive, ignore_errors=True)
            return result

        wal = {"stock": [], "pgrepl": []}
        for r in range(args.rounds):
            for tool in (("stock", "pgrepl") if r % 2 == 0 else ("pgrepl", "stock")):
                wal[tool].append(drain(tool, r))
            print(f"round {r + 1}: " + ", ".join(f"{t} {wal[t][-1][0]:.2f}s" for t in wal), flush=True)

        # -- pgrepl bench vs pgbench ------------------------------------------------------------
        print(f"\n== pgrepl bench --shape tpcb-like vs pgbench ({args.clients} clients, {args.duration} s) ==",
              flush=True)

        def pgbench():
            out = subprocess.run([bin_("pgbench"), "-c", str(args.clients), "-T", str(args.duration)] + conn
                                 + ["postgres"], check=True, capture_output=True, text=True).stdout
            return float(re.search(r"tps = ([0-9.]+)", out).group(1))

        def pgrepl_bench():
            out = subprocess.run([args.pgrepl, "bench", conninfo, "--shape", "tpcb-like", "--modes", "async",
                                  "--clients", str(args.clients), "--duration", str(args.duration), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out)["modes"][0]["tps"]

        tps = {"stock": [], "pgrepl": []}
        for r in range(args.rounds):
            for tool in (("stock", "pgrepl") if r % 2 == 0 else ("pgrepl", "stock")):
                tps[tool].append(pgbench() if tool == "stock" else pgrepl_bench())
            print(f"round {r + 1}: pgbench {tps['stock'][-1]:.0f} tps, pgrepl bench {tps['pgrepl'][-1]:.0f} tps",
                  flush=True)

        med = {t: statistics.median(s for s, _ in wal[t]) for t in wal}
        rss = {t: max(m for _, m in wal[t]) / 1024 for t in wal}
        mb = backlog / 2**20
        med_tps = {t: statistics.median(tps[t]) for t in tps}
        print()
        print(f"{'case':<46}{'median':>12}{'peak RSS MiB':>14}")
        print(f"{'pg_receivewal':<46}{mb / med['stock']:>8.0f} MB/s{rss['stock']:>14.1f}")
        print(f"{'pgrepl receivewal':<46}{mb / med['pgrepl']:>8.0f} MB/s{rss['pgrepl']:>14.1f}")
        print(f"{'pgbench (tpcb-like)':<46}{med_tps['stock']:>8.0f} tps")
        print(f"{'pgrepl bench --shape tpcb-like':<46}{med_tps['pgrepl']:>8.0f} tps")
        print()
        print(f"receivewal time, pg_receivewal / pgrepl:  {med['stock'] / med['pgrepl']:.2f}x  "
              f"(target >= 1.0, goal 2.0); pgrepl peak RSS {rss['pgrepl']:.1f} MiB (target < 32)")
        print(f"tpcb-like TPS, pgbench / pgrepl bench:    {med_tps['stock'] / med_tps['pgrepl']:.2f}x  "
              f"(target <= 1.05: pgrepl reaches {med_tps['pgrepl'] / med_tps['stock']:.2f}x of pgbench)")
    finally:
        subprocess.run(as_postgres([bin_("pg_ctl"), "-D", data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
