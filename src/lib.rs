//! pgrepl: PostgreSQL physical streaming replication, spoken natively.
//!
//! pgrepl opens replication connections itself, takes base backups straight into standby data
//! directories, streams WAL and measures lag, without shelling out to psql, pg_basebackup or
//! the container CLI.
//!
//! # Layout
//! Dependencies only point downward, each module using only those listed below it:
//! - `cli` (in the binary): arguments, hints and output; the only place with clap and anyhow.
//! - [`ha`]: automatic, fenced failover with etcd as the consensus (`pgrepl agent`); uses
//!   `cluster` to act on servers and `lag` to read them. Role changes are reached through
//!   `ha::route`, which sends them to the agents when agents run.
//! - [`bench`]: what synchronous replication costs: a write load per mode, lag over time
//!   (`pgrepl bench`).
//! - [`cluster`]: a replicated cluster from nothing, local processes or containers (`pgrepl up`),
//!   and its role changes.
//! - [`backup`]: base backups into one or more targets (`pgrepl basebackup`), and incremental
//!   ones combined in place.
//! - [`dump`]: a plain SQL dump (`pg_dump -Fp`) restored through pgrepl's own session.
//! - [`replication`]: START_REPLICATION streaming into WAL segment files.
//! - [`fetch`]: PostgreSQL and etcd builds from PyPI for a machine without them (`up`).
//! - [`lag`]: replication health of every node (`pgrepl lag`, `pgrepl status`).
//! - [`conn`]: replication sessions: sockets, TLS, authentication, simple queries.
//! - [`proto`]: the pure wire codec, no I/O.
//! - [`sync_policy`]: which standbys a commit waits for (`FIRST 1 (a, b)`): the one type the
//!   cluster file, the agents' sync record and the server's setting share.
//! - [`lsn`], [`ids`]: WAL positions and segment arithmetic; timeline and system identifiers.
//! - [`fs`]: fsync helpers shared by WAL and backup writers.
//! - [`os_user`]: passwd entries (the effective user, `postgres`).
//! - [`units`]: sizes, rates and durations, parsed and printed.

pub mod backup;
pub mod bench;
pub mod cluster;
pub mod conn;
pub mod dump;
pub mod fetch;
pub mod fs;
pub mod ha;
pub mod ids;
pub mod lag;
pub mod lsn;
pub mod os_user;
pub mod proto;
pub mod replication;
pub mod sync_policy;
pub mod units;

pub use lsn::Lsn;
