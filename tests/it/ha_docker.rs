//! `[ha]` on the docker runtime, as `pgrepl up` builds it: three etcd containers and each
//! node's container running its agent, which runs the server. The faults reach a node the way
//! they reach a machine: its container killed, its server's processes killed, its agent
//! stopped, its container cut from the network through the engine.

use std::time::{Duration, Instant};

use crate::support::docker::connect;
use crate::support::ha::scenarios::{
    etcd_leader_loss, frozen_agent, hung_primary, node_loss, postgres_crash, stalls_and_etcd_quorum,
};
use crate::support::ha::{
    assert_one_writer_at_a_time, docker_engine, HaCluster, HaNodes, Writer, NODES,
};

/// A killed server with its agent alive is restarted in place inside its container, and so is
/// a hung one, once its agent killed it; a killed container (agent and server together) is
/// failed over, and the node rejoins when its container starts again.
#[test]
fn ha_docker_crash_restarts_in_place_and_node_loss_fails_over() {
    let Some(_engine) = docker_engine("ha_docker_crash_restarts_in_place_and_node_loss_fails_over")
    else {
        return;
    };
    let ha = HaCluster::up_docker();
    postgres_crash(&ha);
    hung_primary(&ha);
    node_loss(ha);
}

/// The primary's agent frozen past its lease, then the new primary's container cut from the
/// network: each time another node takes over, the old primary never acknowledges after it,
/// nothing acknowledged is lost, and the old primary rejoins once it is back.
#[test]
fn ha_docker_frozen_agent_and_partitioned_primary_are_replaced_and_rejoin() {
    let Some(_engine) =
        docker_engine("ha_docker_frozen_agent_and_partitioned_primary_are_replaced_and_rejoin")
    else {
        return;
    };
    let ha = HaCluster::up_docker();
    let leader = frozen_agent(&ha);

    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == leader
    });
    let cut = Instant::now();
    connect(&ha.network(), NODES[leader], false);
    let first = writer.wait_ack(&ha, Duration::from_secs(30), cut, |a| a.node != leader);
    eprintln!(
        "partition: {:.2} s from cutting `{}` off to the first acknowledged write on `{}`",
        first.at.duration_since(cut).as_secs_f64(),
        NODES[leader],
        NODES[first.node]
    );
    // Cut off longer than the lease: its agent fenced it meanwhile.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(cut.elapsed()));
    connect(&ha.network(), NODES[leader], true);
    ha.wait_for(
        "the partitioned primary to rejoin as a standby",
        Duration::from_secs(60),
        |ha| ha.streams_from(leader, first.node),
    );
    let acks = writer.stop();
    assert_one_writer_at_a_time(&acks, leader);
    ha.assert_nothing_lost(first.node, &acks);
    let log = ha.agent_log(leader);
    assert!(
        log.contains("fencing primary"),
        "the partitioned primary's agent fenced it:\n{log}"
    );
    // Its agent reaches the new primary as the superuser (the password `up` gave it): pg_rewind
    // rather than a re-clone.
    assert!(
        log.contains("rewound by pg_rewind"),
        "the old primary was rewound, not re-cloned:\n{log}"
    );
}

/// Short stalls and one etcd container lost change nothing; two lost demote the primary, and
/// it takes writes again when quorum returns.
#[test]
fn ha_docker_short_stalls_and_one_etcd_member_change_nothing_and_lost_quorum_demotes_the_primary() {
    let Some(_engine) = docker_engine(
        "ha_docker_short_stalls_and_one_etcd_member_change_nothing_and_lost_quorum_demotes_the_primary",
    ) else {
        return;
    };
    stalls_and_etcd_quorum(HaCluster::up_docker());
}

/// etcd's leader container killed: the other two elect before the primary's fence deadline.
#[test]
fn ha_docker_etcd_leader_loss_fences_nothing() {
    let Some(_engine) = docker_engine("ha_docker_etcd_leader_loss_fences_nothing") else {
        return;
    };
    etcd_leader_loss(HaCluster::up_docker());
}
