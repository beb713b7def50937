#!/usr/bin/env python3
"""A standby rebuilt after its WAL was recycled, side by side (issue 23):

    benches/resync.py [--rounds 3] [--scale 250] [--changed 0.05] [--pg-bin .pg/17/bin]
                      [--workdir DIR]

Needs `cargo build --release` first; run as root (the servers run as OS user postgres).

A local cluster (`pgrepl up --pg-bin`, three nodes) gets `pgbench -i -s SCALE` (scale 250 is
about 3.7 GB). Each round:
  1. a `CHECKPOINT` the standby replays (its restartpoint is then recent, as in a running
     cluster), `pgrepl stop pg_asyncslave`, then `--changed` of pgbench_accounts updated (a contiguous
     range of rows, a different one each round, so that about that share of its blocks change),
     then the WAL the standby needs recycled (`wal_keep_size = 0`, four `pg_switch_wal` +
     `CHECKPOINT`);
  2. timed, each after `settle()` (sync, caches dropped, the disk still for a second):
     - `pgrepl resync pg_asyncslave`: the changed blocks, combined in place, the standby
       started and streaming;
     - `pgrepl reinit pg_asyncslave --force`: pgrepl's re-clone, started and streaming;
     - `pg_basebackup -c fast -X stream --sync-method=syncfs` of the same primary into an empty
       directory (the stock tool at its best; the copy only, nothing started).
     resync runs first (the others leave nothing for it to do); the other two alternate.
Bytes: what resync says it received, the database size for a re-clone, and the size of
pg_basebackup's directory. Prints each round, then medians with min-max, and the ratios.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import REPO, as_postgres, describe_run, pick_port, settle  # noqa: E402

NODES = ["pg_master", "pg_slave", "pg_asyncslave"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=250)
    ap.add_argument("--changed", type=float, default=0.05, help="share of pgbench_accounts updated per round")
    ap.add_argument("--pg-bin", default=os.path.join(REPO, ".pg/17/bin"))
    ap.add_argument("--pgrepl", default=os.path.join(REPO, "target/release/pgrepl"))
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    if not os.path.exists(args.pgrepl):
        sys.exit(f"{args.pgrepl} not found: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="pgrepl-resync-", dir=args.workdir)
    shutil.chown(work, "postgres")
    os.chmod(work, 0o755)
    cluster = Cluster(work, args)
    try:
        cluster.up()
        for line in describe_run(work, args.pg_bin, args.pgrepl):
            print(line)
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        t = time.monotonic()
        subprocess.run(as_postgres([os.path.join(args.pg_bin, "pgbench"), "-i", "-s", str(args.scale), "-q"]
                                   + cluster.conn(0)), check=True, stdout=subprocess.DEVNULL)
        size = int(cluster.psql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
        print(f"  {time.monotonic() - t:.0f} s; {size / 1e9:.2f} GB in the cluster", flush=True)
        cluster.psql("ALTER SYSTEM SET wal_keep_size = 0")
        cluster.psql("SELECT pg_reload_conf()")
        rows = args.scale * 100_000
        runs = {"resync": [], "reclone": [], "pg_basebackup": []}
        sent = {"resync": [], "reclone": [], "pg_basebackup": []}
        for r in range(args.rounds):
            cluster.away(r, rows, args.changed)
            secs, mb = cluster.resync()
            runs["resync"].append(secs)
            sent["resync"].append(mb * 1e6)
            others = ("reclone", "pg_basebackup") if r % 2 == 0 else ("pg_basebackup", "reclone")
            for tool in others:
                secs, nbytes = cluster.reclone() if tool == "reclone" else cluster.basebackup()
                runs[tool].append(secs)
                sent[tool].append(nbytes)
            print(f"round {r + 1}: " + ", ".join(
                f"{t} {runs[t][-1]:.1f} s ({sent[t][-1] / 1e6:.0f} MB)" for t in runs), flush=True)
        report(runs, sent, args)
    finally:
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)


class Cluster:
    def __init__(self, work, args):
        self.work, self.args = work, args
        self.file = os.path.join(work, "pgrepl.toml")
        self.ports = [pick_port() for _ in NODES]

    def pgrepl(self, *argv, capture=False):
        full = [self.args.pgrepl, *argv, "--cluster", self.file, "--pg-bin", self.args.pg_bin]
        return subprocess.run(full, check=True, text=True, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE if capture else subprocess.DEVNULL)

    def up(self):
        subprocess.run([self.args.pgrepl, "init", "--cluster", self.file], check=True, stdout=subprocess.DEVNULL)
        with open(self.file) as f:
            text = f.read()
        for default, port in zip((54320, 54321, 54322), self.ports):
            text = text.replace(f"port = {default}", f"port = {port}")
        with open(self.file, "w") as f:
            f.write(text)
        self.pgrepl("up")

    def down(self):
        subprocess.run([self.args.pgrepl, "down", "--purge", "--cluster", self.file, "--pg-bin", self.args.pg_bin],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def conn(self, i):
        return ["-h", os.path.join(self.work, ".pgrepl/run"), "-p", str(self.ports[i]), "-U", "postgres"]

    def psql(self, sql, i=0):
        out = subprocess.run(as_postgres([os.path.join(self.args.pg_bin, "psql"), *self.conn(i), "-d", "postgres",
                                          "-XAtc", sql]), check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def away(self, r, rows, changed):
        """The async standby stopped, a share of the accounts changed, its WAL recycled. Before
        it stops, a checkpoint it has replayed: its last restartpoint is as recent as a standby's
        of a running cluster is (within checkpoint_timeout), not from before the initial load."""
        self.psql("CHECKPOINT")
        lsn = self.psql("SELECT pg_current_wal_lsn()")
        while self.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'", i=2) != "t":
            time.sleep(0.1)
        self.pgrepl("stop", "pg_asyncslave")
        span = int(rows * changed)
        lo = (r * span) % rows
        self.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > {lo} AND aid <= {lo + span}")
        for _ in range(4):
            self.psql("SELECT pg_switch_wal()")
            self.psql("CHECKPOINT")

    def resync(self):
        settle()
        t = time.monotonic()
        out = self.pgrepl("resync", "pg_asyncslave", "--json", capture=True)
        secs = time.monotonic() - t
        steps = json.loads(out.stdout)["steps"]
        said = " ".join(s["step"] for s in steps)
        m = re.search(r"resynced by an incremental backup: (\d+) MB received in ([\d.]+) s, combined in ([\d.]+) s",
                      said)
        if not m:
            sys.exit(f"resync did not resync incrementally:\n{said}\n{out.stderr}")
        # Where the time went: the process and its checks, then each step (the backup's receipt
        # and the combine are split inside the resync step).
        phases = [("checks", secs - sum(s["ms"] for s in steps) / 1000), ("received", float(m.group(2))),
                  ("combined", float(m.group(3)))] + \
                 [("started" if s["step"].startswith("started") else "streaming", s["ms"] / 1000) for s in steps[1:]]
        print("  resync phases: " + ", ".join(f"{n} {v:.2f} s" for n, v in phases), flush=True)
        return secs, int(m.group(1))

    def reclone(self):
        size = int(self.psql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
        settle()
        t = time.monotonic()
        self.pgrepl("reinit", "pg_asyncslave", "--force")
        return time.monotonic() - t, size

    def basebackup(self):
        dest = os.path.join(self.work, "pg_basebackup")
        shutil.rmtree(dest, ignore_errors=True)
        settle()
        t = time.monotonic()
        subprocess.run(as_postgres([os.path.join(self.args.pg_bin, "pg_basebackup"), *self.conn(0), "-D", dest,
                                    "-c", "fast", "-X", "stream", "--sync-method=syncfs"]), check=True)
        secs = time.monotonic() - t
        size = int(subprocess.run(["du", "-sb", dest], capture_output=True, text=True, check=True).stdout.split()[0])
        shutil.rmtree(dest, ignore_errors=True)
        return secs, size


def report(runs, sent, args):
    print(f"\n{args.rounds} rounds, {args.changed:.0%} of pgbench_accounts changed each; median (min-max):")
    med = {t: statistics.median(v) for t, v in runs.items()}
    for t, v in runs.items():
        print(f"  {t:<14} {med[t]:7.1f} s ({min(v):.1f}-{max(v):.1f})  {statistics.median(sent[t]) / 1e6:8.0f} MB")
    for other in ("reclone", "pg_basebackup"):
        print(f"  resync / {other}: {med['resync'] / med[other]:.2f}x the time, "
              f"{statistics.median(sent['resync']) / statistics.median(sent[other]):.2f}x the bytes")


if __name__ == "__main__":
    main()
