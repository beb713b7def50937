"""What every side-by-side benchmark shares: a throw-away local server, timing with peak RSS of a
whole process tree, and the facts a reader needs to judge the figures (machine, file system,
load, tool versions).
"""

import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def default_pg_bin():
    """The newest server the repo has installed (scripts/install-pg), else Debian's 15."""
    for major in (18, 17):
        path = os.path.join(REPO, ".pg", str(major), "bin")
        if os.path.exists(os.path.join(path, "pg_basebackup")):
            return path
    return "/usr/lib/postgresql/15/bin"


def run_measured(argv, stdout=None):
    """Runs argv; returns (seconds, peak RSS in KiB summed over its process tree, processes seen).

    Each process's peak is the kernel's high-water mark of its own memory (VmHWM), polled every
    5 ms until the command exits; the peaks of the command and every descendant seen (such as
    pg_basebackup's WAL-streaming child) are added up, which counts memory shared after fork
    twice: an upper bound for a tree, exact for one process. getrusage's ru_maxrss is no use
    here: it carries over the RSS of whatever spawned the process (this interpreter) across exec,
    and RUSAGE_CHILDREN gives the largest child, not the sum."""
    with tempfile.TemporaryFile() as err:
        out_actions = ([(os.POSIX_SPAWN_DUP2, stdout.fileno(), 1)] if stdout is not None
                       else [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
        start = time.monotonic()
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=out_actions + [(os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
        peaks = {}
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            for p in tree(pid):
                peaks[p] = max(peaks.get(p, 0), high_water_kib(p))
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"{' '.join(argv)} failed:\n{err.read().decode()}")
    return elapsed, sum(peaks.values()), len(peaks)


def tree(pid):
    """pid and its descendants, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


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


def _disk_activity():
    """Sectors read and written and I/Os in flight, summed over the machine's block devices."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 12 and not fields[2].startswith(("loop", "ram")):
                total += int(fields[5]) + int(fields[9]) + int(fields[11])
    return total


def settle(limit=60.0):
    """Before every timed run (this disk's speed swings 3x with what ran before): dirty pages
    written back, the page cache dropped (as root), then a wait until the block devices were
    still for a whole second (at most `limit` s). Returns the seconds waited."""
    start = time.monotonic()
    os.sync()
    if os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    last = _disk_activity()
    while time.monotonic() - start < limit:
        time.sleep(1.0)
        now = _disk_activity()
        if now == last:
            break
        last = now
    return time.monotonic() - start


def timed(argv):
    """Seconds to run argv (output discarded); fails loudly."""
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def as_postgres(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_picked = []


def pick_port():
    """A free port outside the kernel's ephemeral range (as tests/it/support/harness.rs picks them),
    so no client socket can take it between the pick and the server's bind; never the same one
    twice."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    candidates = [p for p in range(10_000, 65_001) if p < low or p > high] or list(range(20_000, 32_000))
    start = os.getpid() * 97 % len(candidates)
    for k in range(len(candidates)):
        port = candidates[(start + len(_picked) + k) % len(candidates)]
        if port in _picked:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _picked.append(port)
        return port
    sys.exit("no free port outside the ephemeral range")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def describe_run(work, pg_bin, pgrepl):
    """The lines that say where and with what the figures were taken."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
    source = " ".join(subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", work], capture_output=True,
                                     text=True).stdout.split("\n")[0].split())
    version = subprocess.run([os.path.join(pg_bin, "pg_basebackup"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    note = " (tmpfs: syncing is free, the figures flatter every tool)" if "tmpfs" in fstype else ""
    return [f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"machine: {machine()}",
            f"load average at start: {os.getloadavg()[0]:.2f} (1 min)",
            f"work directory: {work} on {source or fstype}{note}",
            f"stock tools: {version} ({pg_bin}); pgrepl: {pgrepl}"]


def major(pg_bin):
    out = subprocess.run([os.path.join(pg_bin, "pg_basebackup"), "--version"], capture_output=True,
                         text=True).stdout
    return int(re.search(r"(\d+)", out.split(")")[-1]).group(1))


def pgrepl_has(pgrepl, command, option):
    """Whether `pgrepl COMMAND --help` lists OPTION (the script runs against older builds too)."""
    return option in subprocess.run([pgrepl, command, "--help"], capture_output=True, text=True).stdout


class Server:
    """A fresh cluster in WORK/primary, run as OS user postgres when we are root; removed by stop()."""

    def __init__(self, pg_bin, workdir=None, prefix="pgrepl-bench-", extra_conf=""):
        self.pg_bin = pg_bin
        self.work = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        os.chmod(self.work, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.work, pw.pw_uid, pw.pw_gid)
        self.data, self.port = os.path.join(self.work, "primary"), free_port()
        self.conn = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres"
        self.extra_conf = extra_conf

    def bin(self, tool):
        return os.path.join(self.pg_bin, tool)

    def use_tls(self):
        """The server offers TLS with a certificate for 127.0.0.1 (self-signed: it is its own CA);
        every client (libpq's through PGSSLMODE and PGSSLROOTCERT, pgrepl's through its
        conninfo) requires it with verify-full. Call before start()."""
        crt, key = (os.path.join(self.work, f) for f in ("server.crt", "server.key"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for f in (crt, key):
                os.chown(f, pw.pw_uid, pw.pw_gid)
        os.chmod(key, 0o600)
        self.extra_conf += f"ssl = on\nssl_cert_file = '{crt}'\nssl_key_file = '{key}'\n"
        os.environ["PGSSLMODE"], os.environ["PGSSLROOTCERT"] = "verify-full", crt
        self.conninfo += f" sslmode=verify-full sslrootcert={crt}"

    def start(self):
        subprocess.run(as_postgres([self.bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                                    "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.work}'\nmax_wal_senders = 10\n"
                       "max_replication_slots = 20\nshared_buffers = 128MB\nmax_wal_size = 4GB\n"
                       + self.extra_conf)
        subprocess.run(as_postgres([self.bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.work, "log"),
                                    "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
        return self

    def psql(self, sql, db="postgres"):
        return subprocess.run([self.bin("psql")] + self.conn + ["-XAtqc", sql, db], check=True,
                              capture_output=True, text=True).stdout.strip()

    def pgbench_init(self, scale):
        subprocess.run([self.bin("pgbench"), "-i", "-q", "-s", str(scale)] + self.conn + ["postgres"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(as_postgres([self.bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.work, ignore_errors=True)


def layout(root):
    """(directories, files with sizes) under root, relative, parents first: what write_like recreates."""
    dirs, files = [], []
    for parent, dnames, fnames in os.walk(root):
        rel = os.path.relpath(parent, root)
        dirs.extend(os.path.normpath(os.path.join(rel, d)) for d in dnames)
        files.extend((os.path.normpath(os.path.join(rel, f)), os.lstat(os.path.join(parent, f)).st_size)
                     for f in fnames)
    return dirs, files


def write_shape(shape, path):
    """Writes `shape` (from layout) as the write floor reads it: `d DIR` and `f SIZE FILE` lines."""
    dirs, files = shape
    with open(path, "w") as f:
        f.writelines(f"d {d}\n" for d in dirs)
        f.writelines(f"f {size} {p}\n" for p, size in files)


def write_floor_binary():
    """Builds benches/write_floor.rs (cargo's bench profile) and returns its path."""
    out = subprocess.run(["cargo", "bench", "--bench", "write_floor", "--no-run", "--message-format=json"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "write_floor" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo built no write_floor executable")


def write_floor(binary, shape_file, dest):
    """Seconds the write floor (benches/write_floor.rs) took to create shape_file's tree under
    dest, fill it from memory on several threads and syncfs it: what no backup client can beat
    on this file system."""
    out = subprocess.run([binary, shape_file, dest], check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


PER_DIR = 1000


def grow(root, have, want):
    """Adds empty files under root until there are `want` (there are `have`): synthetic files
    that a server sends and lists in its manifest exactly as a relation's, 1,000 to a directory,
    with names as long as relation paths (40,000 empty tables with a text column ~ 161k files)."""
    for i in range(have, want):
        d = os.path.join(root, f"{i // PER_DIR:04d}")
        if i % PER_DIR == 0:
            os.makedirs(d, exist_ok=True)
        os.close(os.open(os.path.join(d, f"{16384 + i:07d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
