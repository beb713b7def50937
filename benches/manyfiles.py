#!/usr/bin/env python3
"""Peak memory and time of a base backup as the number of files grows: pgrepl vs pg_basebackup.

    benches/manyfiles.py [--files 1000,160000,1000000] [--pg-bin DIR] [--skip-stock]

What grows with the file count is per-file state (the manifest, the record of what was written),
not the bytes, so the files are synthetic: empty files under PGDATA/pgrepl_bench_files/DDDD/,
1,000 to a directory, with names as long as relation paths. The server sends every file it finds
in the data directory and lists each in the manifest, exactly as it does a relation's (an empty
table has its heap, and with a text column a TOAST table and its index: 40,000 tables ~ 161k
files). Creating 1M empty files takes about half a minute, where 250,000 CREATE TABLEs take most
of an hour. The counts are cumulative: files are added up to each count in turn.

For each count, one run of each tool (pgrepl basebackup with its default sync, pg_basebackup
-Fp -Xstream with --sync-method=syncfs on 17+), into a target on the work directory's file
system, removed afterwards. Peak RSS is VmHWM summed over the process tree (harness.run_measured).
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import REPO, Server, default_pg_bin, describe_run, grow, major, run_measured  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default="1000,160000,1000000", help="comma-separated synthetic file counts")
    ap.add_argument("--pg-bin", default=default_pg_bin(), help="stock tools and server (default: newest in .pg/)")
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default=None, help="where the server and targets live (default: a temp dir)")
    ap.add_argument("--skip-stock", action="store_true", help="run pgrepl only")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")
    counts = sorted(int(n) for n in args.files.split(","))

    server = Server(args.pg_bin, args.workdir, prefix="pgrepl-manyfiles-")
    try:
        server.start()
        for line in describe_run(server.work, args.pg_bin, args.pgrepl):
            print(line)
        base = int(server.psql("select count(*) from pg_ls_dir('base/5') f where f ~ '^[0-9]'"))
        print(f"the empty cluster has some {base * 3} files; synthetic files are added to it", flush=True)
        target = os.path.join(server.work, "target")
        stock = [server.bin("pg_basebackup")] + server.conn + ["-Fp", "-Xstream", "-c", "fast", "-D", target]
        if major(args.pg_bin) >= 17:
            stock.append("--sync-method=syncfs")
        tools = {"pgrepl": [args.pgrepl, "basebackup", "-d", server.conninfo, "-c", "fast", "-D", target]}
        if not args.skip_stock:
            tools["pg_basebackup"] = stock
        root = os.path.join(server.data, "pgrepl_bench_files")
        os.mkdir(root)
        rows, have = [], 0
        for want in counts:
            print(f"creating files up to {want} ...", flush=True)
            grow(root, have, want)
            have = want
            for name, argv in tools.items():
                seconds, kib, procs = run_measured(argv)
                manifest = os.path.getsize(os.path.join(target, "backup_manifest"))
                shutil.rmtree(target)
                rows.append((want, name, seconds, kib / 1024, procs, manifest))
                print(f"{want} files: {name} {seconds:.1f} s, peak RSS {kib / 1024:.1f} MiB "
                      f"({procs} processes), manifest {manifest / 2**20:.0f} MiB", flush=True)
        print()
        print(f"{'files':>9}  {'tool':<15}{'seconds':>9}{'peak RSS MiB':>14}{'manifest MiB':>14}")
        for want, name, seconds, mib, _, manifest in rows:
            print(f"{want:>9}  {name:<15}{seconds:>9.1f}{mib:>14.1f}{manifest / 2**20:>14.0f}")
        at = [r for r in rows if r[1] == "pgrepl" and r[0] >= 160000]
        if at:
            print(f"\npgrepl peak RSS at {at[0][0]} files: {at[0][3]:.1f} MiB (goal <= 40 MiB at 160k files)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
