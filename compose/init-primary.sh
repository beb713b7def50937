#!/bin/sh
# Runs once, on pg_master's first start (the official image runs /docker-entrypoint-initdb.d/
# after initdb): the recipe's replication role, server settings and pg_hba line, as `pgrepl up`
# makes them.
set -eu

# ALTER SYSTEM cannot run in a transaction block: psql reading stdin sends each statement alone.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    --set pw="${REPLICATOR_PASSWORD:?REPLICATOR_PASSWORD is not set}" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD :'pw';
ALTER SYSTEM SET wal_level = 'replica';
ALTER SYSTEM SET max_wal_senders = 4;
ALTER SYSTEM SET ssl = off;
ALTER SYSTEM SET synchronous_commit = on;
ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (pg_slave, pg_asyncslave)';
SQL

# `samenet`: any address on pg_net, i.e. the standbys, and `pgrepl basebackup` on the host,
# whose connections through the published port arrive from the network's gateway.
cat >>"$PGDATA/pg_hba.conf" <<'HBA'

# added by init-primary.sh
host replication replicator samenet scram-sha-256
HBA
