#!/usr/bin/env python3
"""Every side-by-side comparison of pgrepl with the stock tools at their best, on this machine, in
one command:

    benches/compare.py [--rounds 3] [--scale 50] [--clients 8] [--duration 10] [--pg-bin DIR]
                       [--many-files 160000] [--skip-basebackup]
    benches/compare.py resync [--rounds 3] [--scale 250] [--changed 0.05]   (benches/resync.py)

Needs `cargo build --release` first. Prints medians over alternating rounds and ratios:
  1. basebackup vs pg_basebackup --sync-method=syncfs (and fsync vs fsync), two targets vs
     pg_basebackup + cp -r, and the limit (the server alone, and writing the same files): runs
     benches/basebackup.py (see its docstring) with the same --rounds, --scale and --pg-bin;
     then the many-files case: the same with --scale 1 --files N (N empty files, as 40,000
     empty tables make ~161k): one target and the limits only.
  2. receivewal vs pg_receivewal on the same slot backlog: 2 x rounds physical slots are created
     at one position, `pgbench -i -s SCALE` writes the backlog, then each tool drains its own
     slot into an empty directory up to the same -E position (both fsync). Reports MB/s, the
     ratio of times stock / pgrepl (above 1: pgrepl is faster; goal 2) and peak RSS
     (goal < 32 MiB; VmHWM summed over the process tree, see harness.run_measured).
  3. `pgrepl bench --shape tpcb-like --modes async` vs `pgbench -n -M prepared -j CORES` (its
     default tpcb-like script at its fastest client settings) with the same clients and duration
     on the same tables, each run after the same `vacuum pgbench_branches, pgbench_tellers;
     truncate pgbench_history` that pgbench does without -n. This is a check that pgrepl's load
     generator is not the bottleneck of its sync-replication figures (it passes at >= 0.95x of
     pgbench's TPS), not a speed claim.
The server is a fresh local cluster of --pg-bin's version (as OS user postgres when run as root)
with default durability settings; it is removed afterwards.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import REPO, Server, default_pg_bin, describe_run, run_measured  # noqa: E402

# What pgbench does before a run unless -n, done by hand before each tool's run so both start
# from the same tables.
PGBENCH_PREP = ["vacuum pgbench_branches", "vacuum pgbench_tellers", "truncate pgbench_history"]


def main():
    if sys.argv[1:2] == ["resync"]:
        # `compare.py resync [options]`: benches/resync.py (see its docstring).
        os.execv(sys.executable, [sys.executable, os.path.join(HERE, "resync.py"), *sys.argv[2:]])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale: the WAL backlog and the bench tables")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--pg-bin", default=default_pg_bin(), help="stock tools and server (default: newest in .pg/)")
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default=None, help="where the server and the archives live (default: a temp dir)")
    ap.add_argument("--many-files", type=int, default=160000, help="files in the many-files case (0: leave it out)")
    ap.add_argument("--skip-basebackup", action="store_true", help="leave out benches/basebackup.py")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")

    if not args.skip_basebackup:
        cases = [("", ["--scale", str(args.scale)])]
        if args.many_files:
            cases.append((f", {args.many_files} files", ["--scale", "1", "--files", str(args.many_files)]))
        for title, extra in cases:
            print(f"== basebackup (benches/basebackup.py{title}) ==", flush=True)
            subprocess.run([sys.executable, os.path.join(HERE, "basebackup.py"), "--rounds", str(args.rounds),
                            "--pg-bin", args.pg_bin, "--pgrepl", args.pgrepl, *extra]
                           + (["--workdir", args.workdir] if args.workdir else []), check=True)
            print()

    server = Server(args.pg_bin, args.workdir, prefix="pgrepl-compare-")
    try:
        server.start()
        print()
        for line in describe_run(server.work, args.pg_bin, args.pgrepl):
            print(line)
        wal, backlog = receivewal(server, args)
        tps = load(server, args)
        report(wal, backlog, tps, args)
    finally:
        server.stop()


def receivewal(server, args):
    print("\n== receivewal vs pg_receivewal ==", flush=True)
    slots = {(tool, r): f"{tool}_{r}" for tool in ("stock", "pgrepl") for r in range(args.rounds)}
    for slot in slots.values():
        server.psql(f"select pg_create_physical_replication_slot('{slot}', true)")
    print(f"pgbench -i -s {args.scale} (the backlog, and the tables for the load) ...", flush=True)
    server.pgbench_init(args.scale)
    server.psql("select pg_switch_wal()")
    server.psql("checkpoint")
    end = server.psql("select pg_current_wal_lsn()")
    # WAL past the end, so that neither tool waits for the next record to see it reached.
    server.psql("select pg_switch_wal()")
    start = server.psql(f"select restart_lsn from pg_replication_slots where slot_name = '{slots[('stock', 0)]}'")
    backlog = int(server.psql(f"select pg_wal_lsn_diff('{end}', '{start}')"))
    print(f"backlog: {backlog / 2**20:.0f} MiB from {start} to {end}", flush=True)
    archive = os.path.join(server.work, "archive")

    def drain(tool, r):
        shutil.rmtree(archive, ignore_errors=True)
        os.mkdir(archive)
        slot = slots[(tool, r)]
        if tool == "stock":
            argv = [server.bin("pg_receivewal")] + server.conn + ["-D", archive, "-S", slot, "-E", end, "--no-loop"]
        else:
            argv = [args.pgrepl, "receivewal", "-d", server.conninfo, "-D", archive, "-S", slot, "-E", end]
        result = run_measured(argv)
        shutil.rmtree(archive, ignore_errors=True)
        return result

    wal = {"stock": [], "pgrepl": []}
    for r in range(args.rounds):
        for tool in (("stock", "pgrepl") if r % 2 == 0 else ("pgrepl", "stock")):
            wal[tool].append(drain(tool, r))
        print(f"round {r + 1}: " + ", ".join(f"{t} {wal[t][-1][0]:.2f}s" for t in wal), flush=True)
    return wal, backlog


def load(server, args):
    threads = min(os.cpu_count() or 1, args.clients)
    print(f"\n== pgrepl bench --shape tpcb-like vs pgbench -n -M prepared -j {threads} "
          f"({args.clients} clients, {args.duration} s) ==", flush=True)

    def prepare():
        for sql in PGBENCH_PREP:
            server.psql(sql)

    def pgbench():
        prepare()
        out = subprocess.run([server.bin("pgbench"), "-n", "-M", "prepared", "-j", str(threads), "-c",
                              str(args.clients), "-T", str(args.duration)] + server.conn + ["postgres"],
                             check=True, capture_output=True, text=True).stdout
        return float(re.search(r"tps = ([0-9.]+)", out).group(1))

    def pgrepl_bench():
        prepare()
        out = subprocess.run([args.pgrepl, "bench", server.conninfo, "--shape", "tpcb-like", "--modes", "async",
                              "--clients", str(args.clients), "--duration", str(args.duration), "--json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)["modes"][0]["tps"]

    tps = {"stock": [], "pgrepl": []}
    for r in range(args.rounds):
        for tool in (("stock", "pgrepl") if r % 2 == 0 else ("pgrepl", "stock")):
            tps[tool].append(pgbench() if tool == "stock" else pgrepl_bench())
        print(f"round {r + 1}: pgbench {tps['stock'][-1]:.0f} tps, pgrepl bench {tps['pgrepl'][-1]:.0f} tps",
              flush=True)
    return tps


def report(wal, backlog, tps, args):
    med = {t: statistics.median(r[0] for r in wal[t]) for t in wal}
    peak = {t: max((r[1], i + 1, r[2]) for i, r in enumerate(wal[t])) for t in wal}
    mb = backlog / 2**20
    med_tps = {t: statistics.median(tps[t]) for t in tps}
    best = max(tps["stock"])
    print()
    print(f"{'case':<48}{'median':>12}{'peak RSS MiB (round, processes)':>34}")
    for t, label in (("stock", "pg_receivewal (fsync)"), ("pgrepl", "pgrepl receivewal (fsync)")):
        print(f"{label:<48}{mb / med[t]:>8.0f} MB/s{'{:.1f} ({}, {})'.format(peak[t][0] / 1024, *peak[t][1:]):>34}")
    print(f"{'pgbench -n -M prepared -j N (tpcb-like)':<48}{med_tps['stock']:>8.0f} tps   (best {best:.0f})")
    print(f"{'pgrepl bench --shape tpcb-like':<48}{med_tps['pgrepl']:>8.0f} tps")
    print()
    print(f"receivewal time, pg_receivewal / pgrepl:  {med['stock'] / med['pgrepl']:.2f}x  (goal >= 2.0); "
          f"pgrepl peak RSS {peak['pgrepl'][0] / 1024:.1f} MiB (goal < 32)")
    print("  equal work: pg_receivewal zero-fills each new 16 MiB segment and fsyncs it and its directory at "
          "open; pgrepl preallocates it and syncs it and its directory at open")
    verdict = "passes" if med_tps["pgrepl"] >= 0.95 * best else "FAILS"
    print(f"load generator check: pgrepl bench reaches {med_tps['pgrepl'] / best:.2f}x of pgbench's best "
          f"round ({verdict}: >= 0.95x means the generator is not what bounds pgrepl bench's figures; "
          "not a speed claim)")


if __name__ == "__main__":
    main()
