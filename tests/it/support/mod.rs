//! What the spec files share; a spec file imports from here, never from another spec file.
//!
//! - [`pgrepl`] builds the command that runs the binary; [`eventually`] waits for a condition
//!   with a deadline and says what never came.
//! - [`harness`]: PostgreSQL servers in temp dirs, the ports tests take; [`capability`]: what a
//!   test skips without (and CI requires).
//! - [`cluster`]: a cluster file `up` builds on; [`backup`] and [`standbys`]: a primary with
//!   standbys made by `pgrepl basebackup`; [`fake_server`]: a scripted, hostile server.
//! - [`etcd`], [`docker`]: the peers as the tests run them; [`ha`]: agents on those, a writer
//!   that records every acknowledged commit, and the faults the HA specs share.

pub mod backup;
pub mod capability;
pub mod cluster;
mod command;
pub mod docker;
pub mod etcd;
pub mod fake_server;
pub mod ha;
pub mod harness;
pub mod sql_tls;
pub mod standbys;
mod wait;

pub use command::{pgrepl, pgrepl_output, stderr, stdout, without_pg_env, PGREPL};
pub use wait::eventually;
