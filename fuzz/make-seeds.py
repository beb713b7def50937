#!/usr/bin/env python3
"""Writes the fuzz seed corpora into fuzz/seeds/<target>/ from the real server captures in
tests/fixtures/wire/*.hex (see proto-notes/ for how they were captured) and small tars laid out
as PostgreSQL's BASE_BACKUP writes them. Idempotent; run by .ci/run before fuzzing."""

import io
import pathlib
import tarfile

FUZZ = pathlib.Path(__file__).resolve().parent
WIRE = FUZZ.parent / "tests" / "fixtures" / "wire"
SEEDS = FUZZ / "seeds"


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def frames(raw):
    """Splits a capture into (tag, body) backend frames; stops at anything that is not one."""
    out = []
    while len(raw) >= 5:
        n = int.from_bytes(raw[1:5], "big")
        if n < 4 or len(raw) < n + 1:
            break
        out.append((raw[0:1], raw[5 : n + 1]))
        raw = raw[n + 1 :]
    return out


captures = {p.stem: bytes.fromhex("".join(p.read_text().split())) for p in sorted(WIRE.glob("*.hex"))}

# backend_message: byte 0 = how many piece sizes follow (0: fed at once), then the stream.
everything = b""
for name, raw in captures.items():
    put("backend_message", name, b"\x00" + raw)
    put("backend_message", name + "_split", b"\x03\x01\x05\x07" + raw)
    everything += raw
put("backend_message", "all_captures", b"\x00" + everything)
put("backend_message", "all_captures_split", b"\x02\x01\x11" + everything)

# base_backup_stream: the payload of every CopyData of the PG 15+ stream.
for name, raw in captures.items():
    if name.startswith("base_backup"):
        for i, (tag, body) in enumerate(frames(raw)):
            if tag == b"d":
                put("base_backup_stream", f"{name}_{i}", body)


def tar_bytes(entries, fmt=tarfile.USTAR_FORMAT, trailer=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if not trailer:
        raw = raw[: len(raw) - 1024].rstrip(b"\0")
        raw += b"\0" * ((512 - len(raw) % 512) % 512)
    return raw


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o600, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    info.uid = info.gid = 26
    info.uname = info.gname = "postgres"
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    else:
        data = None
    info.linkname = link
    return info, data


base = [
    entry("backup_label", data=b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
    entry("PG_VERSION", data=b"15\n"),
    entry("global", tarfile.DIRTYPE, mode=0o700),
    entry("global/pg_control", data=bytes(range(256)) * 2),
    entry("base", tarfile.DIRTYPE, mode=0o700),
    entry("base/1", tarfile.DIRTYPE, mode=0o700),
    entry("base/1/1259", data=b"\x01" * 8192),
    entry("pg_tblspc", tarfile.DIRTYPE, mode=0o700),
    entry("pg_tblspc/16385", tarfile.SYMTYPE, mode=0o777, link="/srv/ts1"),
    entry("pg_wal", tarfile.DIRTYPE, mode=0o700),
]
# byte 0: read piece size / 8 for the extractor's chunking.
put("tar_extract", "base_pg15", b"\x40" + tar_bytes(base))
put("tar_extract", "base_pg14_no_trailer", b"\x01" + tar_bytes(base, trailer=False))
put("tar_extract", "tablespace", b"\x07" + tar_bytes([
    entry("PG_15_202209061", tarfile.DIRTYPE, mode=0o700),
    entry("PG_15_202209061/5", tarfile.DIRTYPE, mode=0o700),
    entry("PG_15_202209061/5/16386", data=b"\x07" * 1000),
]))
put("tar_extract", "hostile", b"\x02" + tar_bytes([
    entry("../escape", data=b"x"),
    entry("/abs", data=b"x"),
    entry("link", tarfile.SYMTYPE, link="/etc"),
    entry("hard", tarfile.LNKTYPE, link="PG_VERSION"),
    entry("fifo", tarfile.FIFOTYPE),
]))
put("tar_extract", "gnu_long_name", b"\x10" + tar_bytes(
    [entry("base/1/" + "n" * 120, data=b"long")], fmt=tarfile.GNU_FORMAT))
put("tar_extract", "pax", b"\x10" + tar_bytes(
    [entry("base/\u00e9", data=b"pax")], fmt=tarfile.PAX_FORMAT))

conninfos = [
    "host=127.0.0.1 port=5432 user=replicator password=secret sslmode=disable",
    "host=/var/run/postgresql port=5433 user=rep dbname=replication application_name=standby_a",
    "host = db  port= 6432 user='my user' password='a \\' b\\\\c' connect_timeout=10",
    "hostaddr=10.0.0.1 user=u passfile=/etc/pg\\ pass sslmode=verify-full sslrootcert=/ca.crt channel_binding=require",
    "postgresql://rep:s%40cret@db.example:5432/postgres?sslmode=require&application_name=x",
    "postgres://[::1]:5433/db?host=/tmp&connect_timeout=3",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/db?ssl=true",
    "postgresql://user@host1,host2/db",
    "postgresql:///?gssencmode=prefer&target_session_attrs=any&keepalives=1",
    "user=x password=a b",
    "service=foo",
    "",
]
for i, text in enumerate(conninfos):
    put("conninfo", f"seed{i}", text.encode())

spec = '''runtime = "local"
state_dir = ".pgrepl"

[replication]
user = "replicator"
password = "pass"

[settings]
max_wal_senders = "4"
ssl = "off"
wal_level = "replica"

[sync]
method = "FIRST"
num_sync = 1
standbys = ["pg_slave", "pg_asyncslave"]
synchronous_commit = "on"

[[nodes]]
name = "pg_master"
role = "primary"
port = 54320

[[nodes]]
name = "pg_slave"
role = "standby"
port = 54321

[[nodes]]
name = "pg_asyncslave"
role = "standby"
port = 54322

[docker]
image = "postgres:17"
network = "pg_net"
postgres_uid = 999
postgres_gid = 999
'''
put("cluster_spec", "default", spec.encode())
put("cluster_spec", "docker_any", spec.replace('"local"', '"docker"').replace('"FIRST"', '"ANY"')
    .replace('password = "pass"', 'password_file = "secrets/rep"').encode())
put("cluster_spec", "async_only", spec.replace('standbys = ["pg_slave", "pg_asyncslave"]', "standbys = []")
    .replace("num_sync = 1", "num_sync = 0").encode())
count = sum(1 for _ in SEEDS.rglob("*") if _.is_file())
print(f"fuzz seeds: {count} files in {SEEDS}")
