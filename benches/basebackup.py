#!/usr/bin/env python3
"""Side-by-side base backup benchmark: pgrepl vs pg_basebackup at its fastest durable setting,
and the machine's limit for the same work, in one run.

    benches/basebackup.py [--scale 50] [--rounds 3] [--pg-bin DIR] [--no-fsync-column] [--tls]
                          [--files N]

Builds a pgbench database of the given scale on a fresh local server (as OS user postgres when
run as root), then alternates the cases round by round (order reversed every other round):
  stock_one   pg_basebackup -Fp -Xstream --sync-method=syncfs (17+; older: its fsync default)
  pgrepl_one  pgrepl basebackup, one target, --sync-method syncfs (its default on Linux 5.8+)
  stock_fsync pg_basebackup -Fp -Xstream, per-file fsync (its default)  } the labelled second
  pgrepl_fsync pgrepl basebackup --sync-method fsync                    } column
  stock_two   stock_one + cp -r into a second target + sync -f
  pgrepl_two  pgrepl basebackup -D a -D b (one pass)
  blackhole   pg_basebackup --target=blackhole -Xnone: the server's own time to read and send
  floor       creating the same directories and files as a finished backup, writing as many bytes
              from memory on 4 threads, and one syncfs, on the same file system
              (benches/write_floor.rs): the fastest writer of that tree we could build
and prints medians, ratios (pgrepl / stock, lower is better) and the limit, max(blackhole, floor):
with --tls every session is TLS with sslmode=verify-full against the server's CA (pgrepl: rustls;
pg_basebackup: libpq's OpenSSL; the server's side is OpenSSL for both).
a client that overlaps receiving with writing can at best match the slower of the two.
Before every timed run the disk is settled (harness.settle: sync, drop caches, wait until idle).
With --files N (the many-files case), N empty synthetic files are added to the data directory
first (harness.grow: 40,000 empty tables are ~161k files) and only the one-target cases, the
server alone and the floor run: the goals there are pgrepl <= 1.0x of pg_basebackup syncfs and
a peak RSS <= 40 MiB.
Peak RSS is the sum over each client's process tree (pg_basebackup -Xstream forks a WAL child)
of each process's VmHWM, the largest over the rounds, with the round it came from.
Every target is removed after it is measured; all targets live on the work directory's file
system, which is printed (tmpfs would make syncing free).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (REPO, Server, default_pg_bin, describe_run, grow, layout, major, pgrepl_has,  # noqa: E402
                     run_measured, settle, timed, write_floor, write_floor_binary, write_shape)

LABELS = {
    "stock_one": "pg_basebackup -Fp -Xstream{sync} (1 target)",
    "pgrepl_one": "pgrepl basebackup{sync} (1 target)",
    "stock_fsync": "pg_basebackup -Fp -Xstream, fsync per file",
    "pgrepl_fsync": "pgrepl basebackup --sync-method fsync",
    "stock_two": "pg_basebackup + cp -r + sync (2 targets)",
    "pgrepl_two": "pgrepl basebackup -D a -D b (2 targets)",
    "blackhole": "limit: server alone (--target=blackhole)",
    "floor": "limit: write same files+bytes, 4 threads, syncfs",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-bin", default=default_pg_bin(), help="stock tools and server (default: newest in .pg/)")
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default=None, help="where the server and targets live (default: a temp dir)")
    ap.add_argument("--no-fsync-column", action="store_true", help="leave out the fsync-vs-fsync cases")
    ap.add_argument("--tls", action="store_true", help="every session over TLS, sslmode=verify-full")
    ap.add_argument("--files", type=int, default=0, help="the many-files case: add N empty files first")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")

    server = Server(args.pg_bin, args.workdir)
    try:
        if args.tls:
            server.use_tls()
        server.start()
        for line in describe_run(server.work, args.pg_bin, args.pgrepl):
            print(line)
        if args.tls:
            print("TLS: every session, sslmode=verify-full (pgrepl: rustls; pg_basebackup: OpenSSL)")
        run(server, args)
    finally:
        server.stop()


def run(server, args):
    stock_syncfs = major(args.pg_bin) >= 17
    pgrepl_methods = pgrepl_has(args.pgrepl, "basebackup", "--sync-method")
    print(f"pgbench -i -s {args.scale} ...", flush=True)
    server.pgbench_init(args.scale)
    if args.files:
        print(f"adding {args.files} empty files ...", flush=True)
        grow(os.path.join(server.data, "pgrepl_bench_files"), 0, args.files)
    server.psql("checkpoint")
    size = server.psql("select pg_size_pretty(sum(pg_database_size(oid))) from pg_database")
    print(f"database size: {size}; {args.rounds} rounds, alternating order", flush=True)

    work, conn, bin_ = server.work, server.conn, server.bin
    a, b, ref = (os.path.join(work, d) for d in ("a", "b", "ref"))
    stock = [bin_("pg_basebackup")] + conn + ["-Fp", "-Xstream", "-c", "fast"]
    pgrepl = [args.pgrepl, "basebackup", "-d", server.conninfo, "-c", "fast"]
    syncfs_stock = ["--sync-method=syncfs"] if stock_syncfs else []
    syncfs_pgrepl = ["--sync-method", "syncfs"] if pgrepl_methods else []

    def stock_two():
        t, rss, procs = run_measured(stock + syncfs_stock + ["-D", a])
        return t + timed(["cp", "-r", a, b]) + timed(["sync", "-f", b]), rss, procs

    floor = write_floor_binary()
    shape_file = os.path.join(work, "shape")

    cases = {
        "stock_one": lambda: run_measured(stock + syncfs_stock + ["-D", a]),
        "pgrepl_one": lambda: run_measured(pgrepl + syncfs_pgrepl + ["-D", a]),
        "stock_two": stock_two,
        "pgrepl_two": lambda: run_measured(pgrepl + syncfs_pgrepl + ["-D", a, "-D", b]),
        "blackhole": lambda: run_measured([bin_("pg_basebackup")] + conn
                                          + ["--target=blackhole", "-Xnone", "-c", "fast"]),
        "floor": lambda: (write_floor(floor, shape_file, b), 0, 0),
    }
    if args.files:
        for name in ("stock_two", "pgrepl_two"):
            del cases[name]
    elif not args.no_fsync_column and stock_syncfs:
        cases["stock_fsync"] = lambda: run_measured(stock + ["-D", a])
        if pgrepl_methods:
            cases["pgrepl_fsync"] = lambda: run_measured(pgrepl + ["--sync-method", "fsync", "-D", a])

    # The floor writes a finished backup's tree.
    subprocess.run(stock + ["--no-sync", "-D", ref], check=True)
    shape = layout(ref)
    write_shape(shape, shape_file)
    shutil.rmtree(ref)
    print(f"backup: {len(shape[1])} files, {sum(s for _, s in shape[1]) / 2**20:.0f} MiB", flush=True)
    results = {name: [] for name in cases}
    for round_ in range(args.rounds):
        for name in (list(cases) if round_ % 2 == 0 else list(reversed(cases))):
            for d in (a, b):
                shutil.rmtree(d, ignore_errors=True)
            settle()
            results[name].append(cases[name]())
            for d in (a, b):
                shutil.rmtree(d, ignore_errors=True)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {results[n][-1][0]:.2f}s" for n in cases), flush=True)
    report(results, stock_syncfs, pgrepl_methods, args.files)


def report(results, stock_syncfs, pgrepl_methods, many_files):
    med = {n: statistics.median(r[0] for r in rs) for n, rs in results.items()}

    def peak(n):
        """(MiB, round, processes) of the largest peak RSS over the rounds."""
        i, (_, kib, procs) = max(enumerate(results[n]), key=lambda x: x[1][1])
        return kib / 1024, i + 1, procs

    print()
    print(f"{'case':<56}{'median s':>9}{'min-max s':>14}{'peak RSS MiB (round, processes)':>34}")
    for n in results:
        sync = (" --sync-method=syncfs" if stock_syncfs else "") if n.startswith("stock") else \
            (" --sync-method syncfs" if pgrepl_methods else "")
        label = LABELS[n].format(sync=sync)
        times = [r[0] for r in results[n]]
        rss = "" if n == "floor" else "{:.1f} ({}, {})".format(*peak(n))
        print(f"{label:<56}{med[n]:>9.2f}{min(times):>7.2f}-{max(times):<6.2f}{rss:>34}")
    limit = max(med["blackhole"], med["floor"])
    bound = "the server" if med["blackhole"] >= med["floor"] else "writing and syncing"
    print()
    sync = "both syncfs" if stock_syncfs else "pg_basebackup < 17 can only fsync per file"
    goal = "1.0" if many_files else "0.6"
    print(f"one target,  pgrepl / pg_basebackup ({sync}): {med['pgrepl_one'] / med['stock_one']:.2f}x  "
          f"(goal <= {goal}x)")
    if "pgrepl_fsync" in med:
        print(f"one target,  pgrepl / pg_basebackup (both fsync per file): "
              f"{med['pgrepl_fsync'] / med['stock_fsync']:.2f}x")
    elif "stock_fsync" in med:
        print(f"one target,  pgrepl syncfs / pg_basebackup fsync default: "
              f"{med['pgrepl_one'] / med['stock_fsync']:.2f}x  (this pgrepl has no --sync-method)")
    if "pgrepl_two" in med:
        print(f"two targets, pgrepl / (pg_basebackup + cp -r):  {med['pgrepl_two'] / med['stock_two']:.2f}x  "
              "(goal <= 0.35x)")
    print(f"limit = max(server alone {med['blackhole']:.2f} s, floor {med['floor']:.2f} s) = {limit:.2f} s, "
          f"bound by {bound}")
    print(f"pgrepl one target / limit: {med['pgrepl_one'] / limit:.2f}x;  pg_basebackup / limit: "
          f"{med['stock_one'] / limit:.2f}x")
    beaten = [n for n in results if n not in ("floor", "blackhole") and min(r[0] for r in results[n]) < med["floor"]]
    if beaten:
        print(f"NOTE: {', '.join(beaten)} beat the floor's median in some round: the floor is not a floor here")
    rss = {n: peak(n)[0] for n in results if n != "floor"}
    pgrepl_rss = max(v for n, v in rss.items() if n.startswith("pgrepl"))
    print(f"peak RSS: pgrepl {pgrepl_rss:.1f} MiB, pg_basebackup (parent + WAL child, summed) "
          f"{rss['stock_one']:.1f} MiB  (goal < {40 if many_files else 32} MiB for pgrepl)")


if __name__ == "__main__":
    main()
