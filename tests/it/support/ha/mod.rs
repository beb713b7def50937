//! Nodes run by agents: the HA bench ([`HaCluster`]), what every HA test asks of its nodes
//! ([`HaNodes`]), the writer that records what was acknowledged ([`Writer`]), clusters whose
//! `up` starts the agents ([`up`]), the agents' HTTP API ([`api`]), and the faults several
//! specs inject the same way ([`scenarios`]).

pub mod api;
mod cluster;
pub mod load;
mod nodes;
pub mod scenarios;
pub mod up;
mod writer;

pub(crate) use cluster::{spawn_agent, HaCluster, NODES, TTL};
pub(crate) use nodes::{signal_server, HaNodes};
pub(crate) use writer::{
    assert_nothing_lost, assert_one_writer_at_a_time, open_session, Ack, AckLog, Targets, Writer,
    COMMIT_TIMEOUT, WRITTEN_IDS,
};

use crate::support::{capability, docker};

/// The Docker engine's lock for a test of `[ha]` on the docker runtime, with its images and
/// etcd; `None` (said) when the machine has no engine or no etcd.
pub(crate) fn docker_engine(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Err(why) = docker::engine_with_image() {
        capability::skip(test, "docker", &format!("no Docker engine answers: {why}"));
        return None;
    }
    capability::tool(test, "etcd", "apt-get install etcd-server")?;
    Some(docker::ENGINE.lock().unwrap_or_else(|e| e.into_inner()))
}
