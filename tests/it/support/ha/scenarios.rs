//! The faults the HA specs inject on both runtimes (`ha.rs` on the local one, `ha_docker.rs`
//! on containers, `ha_faults.rs` behind a lock), each with what must follow: who takes writes,
//! how soon, and that nothing acknowledged is lost.

use std::time::{Duration, Instant};

use crate::support::ha::{
    assert_one_writer_at_a_time, Ack, HaCluster, HaNodes, Writer, NODES, TTL,
};

/// The primary's agent and server die together under the writer: a sync standby takes over,
/// the other follows it, nothing acknowledged is lost, and the old node rejoins when its agent
/// comes back.
pub(crate) fn node_loss(mut ha: HaCluster) {
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });
    std::thread::sleep(Duration::from_secs(1));

    let killed = Instant::now();
    ha.kill_agent(0);
    ha.kill_postgres(0);
    let first = writer.wait_ack(&ha, Duration::from_secs(30), killed, |a| a.node != 0);
    let took = first.at.duration_since(killed);
    eprintln!(
        "node loss: {:.2} s from the kill to the first acknowledged write on `{}` (lease TTL {} s)",
        took.as_secs_f64(),
        NODES[first.node],
        TTL.as_secs()
    );
    let other = 3 - first.node;
    ha.wait_for(
        "the other standby to follow the new primary",
        Duration::from_secs(20),
        |ha| ha.streams_from(other, first.node),
    );
    // Writes go on after the failover.
    let later = first.at + Duration::from_millis(500);
    writer.wait_ack(&ha, Duration::from_secs(10), later, |a| {
        a.node == first.node
    });
    let acks = writer.stop();
    ha.assert_nothing_lost(first.node, &acks);
    // Generous for a loaded CI machine; the figure above is the measurement.
    assert!(
        took < Duration::from_secs(10),
        "failover took {took:?}\n{}",
        ha.logs()
    );

    // The old node comes back and rejoins as a standby of the new primary.
    ha.start_agent(0);
    ha.wait_for("the old primary to rejoin", Duration::from_secs(60), |ha| {
        ha.streams_from(0, first.node)
    });
    assert_eq!(
        ha.try_psql(0, "SELECT pg_is_in_recovery()").as_deref(),
        Some("t")
    );
}

/// The primary's agent stopped longer than its lease while its server runs on: another node
/// takes over, the old primary never acknowledges after it, and it rejoins once its agent
/// runs again. Returns the new leader.
pub(crate) fn frozen_agent(ha: &HaCluster) -> usize {
    let writer = Writer::start(ha);
    writer.wait_ack(ha, Duration::from_secs(10), Instant::now(), |a| a.node == 0);

    let frozen = Instant::now();
    ha.signal_agent(0, libc::SIGSTOP);
    let first = writer.wait_ack(ha, Duration::from_secs(30), frozen, |a| a.node != 0);
    eprintln!(
        "frozen agent: {:.2} s from SIGSTOP to the first acknowledged write on `{}`",
        first.at.duration_since(frozen).as_secs_f64(),
        NODES[first.node]
    );
    // Frozen for longer than the lease: its server kept running all along.
    std::thread::sleep((TTL * 2).saturating_sub(frozen.elapsed()));
    assert!(
        ha.try_psql(0, "SELECT 1").is_some(),
        "the old primary's server ran on while its agent was frozen"
    );
    ha.signal_agent(0, libc::SIGCONT);
    ha.wait_for(
        "the old primary to rejoin as a standby",
        Duration::from_secs(60),
        |ha| ha.streams_from(0, first.node),
    );
    let acks = writer.stop();
    assert_one_writer_at_a_time(&acks, 0);
    ha.assert_nothing_lost(first.node, &acks);
    let log = ha.agent_log(0);
    assert!(
        log.contains("Fence") || log.contains("fencing"),
        "the old primary was fenced:\n{log}"
    );
    first.node
}

/// A stall of the primary's agent shorter than the tolerance and one etcd member lost change
/// nothing; a second member lost stops the primary; quorum back, writes go on, nothing lost.
pub(crate) fn stalls_and_etcd_quorum(mut ha: HaCluster) {
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });

    // A stall shorter than the documented 1 s tolerance.
    ha.signal_agent(0, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    ha.signal_agent(0, libc::SIGCONT);
    // One etcd member of three dies.
    ha.etcd.kill(2);
    let calm = Instant::now();
    std::thread::sleep(TTL * 3);
    assert_eq!(ha.leader().as_deref(), Some("pg_master"), "{}", ha.logs());
    let acks = writer.acks();
    assert!(
        acks.iter().all(|a| a.node == 0),
        "no other node took writes"
    );
    assert!(
        acks.iter().filter(|a| a.at > calm).count() >= 20,
        "writes went on through the stall and the etcd member loss\n{}",
        ha.logs()
    );
    for i in 1..3 {
        assert_eq!(
            ha.try_psql(i, "SELECT pg_is_in_recovery()").as_deref(),
            Some("t")
        );
    }

    // A second member dies: no quorum. The primary stops taking writes; nobody is promoted.
    let lost = Instant::now();
    ha.etcd.kill(1);
    ha.wait_for("the primary to stop taking writes", TTL * 3, |ha| {
        ha.try_psql(0, "SELECT 1").is_none()
    });
    eprintln!(
        "quorum lost: the primary was fenced after {:.2} s",
        lost.elapsed().as_secs_f64()
    );
    // etcd 3.4 renews leases at its leader without consensus, so a lone member that was the
    // leader renews until it steps down (one 1 s election timeout); the fence follows 1.5 s
    // after the last renewal. A new etcd leader restarts every lease at TTL, so no lease can
    // expire elsewhere before that.
    let last = writer.acks().iter().map(|a| a.at).max().unwrap();
    assert!(
        last < lost + TTL + Duration::from_millis(1500),
        "the primary acknowledged {:?} after quorum was lost",
        last - lost
    );
    for i in 1..3 {
        assert_eq!(
            ha.try_psql(i, "SELECT pg_is_in_recovery()").as_deref(),
            Some("t")
        );
    }

    // Quorum returns: a primary takes writes again, with every commit acknowledged before.
    let back = Instant::now();
    ha.etcd.restart(1);
    let first = writer.wait_ack(&ha, Duration::from_secs(30), back, |_| true);
    eprintln!(
        "quorum back: `{}` took writes again {:.2} s after the etcd member was restarted",
        NODES[first.node],
        first.at.duration_since(back).as_secs_f64()
    );
    let acks = writer.stop();
    ha.assert_nothing_lost(first.node, &acks);
}

/// etcd's leader member killed under the writer: a new one is elected before the primary's
/// fence deadline, so nothing is fenced, nobody else takes writes, nothing is lost.
pub(crate) fn etcd_leader_loss(mut ha: HaCluster) {
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });
    std::thread::sleep(Duration::from_secs(1));

    let leader = ha
        .etcd
        .wait_leader(Duration::from_secs(5))
        .expect("etcd has a leader");
    let killed = Instant::now();
    ha.etcd.kill(leader);
    let elected = ha.etcd.wait_leader(Duration::from_secs(10));
    let took = killed.elapsed();
    std::thread::sleep((TTL * 3).saturating_sub(killed.elapsed()));
    let acks = writer.stop();
    let after: Vec<&Ack> = acks.iter().filter(|a| a.at > killed).collect();
    let gap = after
        .iter()
        .scan(killed, |last, a| Some(a.at - std::mem::replace(last, a.at)))
        .max()
        .unwrap_or(TTL * 3);
    let log = ha.agent_log(0);
    // The agent says how long renewals failed: "renewed again, N ms after the last confirmed
    // renewal was sent" (fenced at 1500 ms).
    let renewal_gap = log
        .lines()
        .filter_map(|l| {
            l.split("renewed again, ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0u64);
    eprintln!(
        "etcd leader loss: a new etcd leader after {:.2} s, no confirmed renewal for {renewal_gap} ms, longest write gap {:.2} s",
        took.as_secs_f64(),
        gap.as_secs_f64()
    );
    assert!(elected.is_some(), "the two members left elected no leader");
    assert!(
        !log.contains("fencing primary"),
        "the primary was fenced:\n{log}"
    );
    assert_eq!(ha.leader().as_deref(), Some("pg_master"), "{}", ha.logs());
    assert!(
        after.iter().all(|a| a.node == 0),
        "no other node took writes"
    );
    assert!(
        after.iter().any(|a| a.at > killed + TTL * 2),
        "writes went on after etcd's leader died\n{}",
        ha.logs()
    );
    ha.assert_nothing_lost(0, &acks);
}

/// The primary's server dies, its agent lives: the agent restarts it in place (faster than a
/// failover) and says so; nothing acknowledged is lost.
pub(crate) fn postgres_crash(ha: &HaCluster) {
    let fault = |ha: &HaCluster| ha.kill_postgres(0);
    restarted_in_place(
        ha,
        "postgres crash",
        fault,
        Duration::ZERO,
        &["RestartInPlace"],
    );
}

/// Every process of the primary's server stopped (SIGSTOP), its agent alive: the server runs
/// but answers nothing, and its agent keeps the lease. After the agent's hung limit (10 s) it
/// kills the server and restarts it in place; writes go on there, nothing acknowledged lost.
pub(crate) fn hung_primary(ha: &HaCluster) {
    let fault = |ha: &HaCluster| ha.signal_postgres(0, libc::SIGSTOP);
    let says = ["KillHung", "RestartInPlace"];
    restarted_in_place(ha, "hung primary", fault, Duration::from_secs(10), &says);
}

/// `fault` on the primary's server under the writer: its agent brings it back in place, no
/// sooner than `not_before`, and its log `says` each word; writes go on there, nothing lost.
pub(crate) fn restarted_in_place(
    ha: &HaCluster,
    what: &str,
    fault: impl FnOnce(&HaCluster),
    not_before: Duration,
    says: &[&str],
) {
    let writer = Writer::start(ha);
    writer.wait_ack(ha, Duration::from_secs(10), Instant::now(), |a| a.node == 0);
    std::thread::sleep(Duration::from_secs(1));

    let at = Instant::now();
    fault(ha);
    // A commit acknowledged just before the fault may arrive after it: count the restarted
    // server's, through a new session.
    let before = writer.acks().last().unwrap().session;
    let limit = Duration::from_secs(30) + not_before;
    let first = writer.wait_ack(ha, limit, at, |a| a.session > before);
    let took = first.at.duration_since(at);
    eprintln!(
        "{what}: {:.2} s from the fault to the first acknowledged write on `{}`",
        took.as_secs_f64(),
        NODES[first.node]
    );
    assert_eq!(
        first.node,
        0,
        "the primary was restarted, not failed over\n{}",
        ha.logs()
    );
    assert!(
        took >= not_before,
        "restarted after {took:?}\n{}",
        ha.logs()
    );
    assert_eq!(ha.leader().as_deref(), Some("pg_master"));
    let log = ha.agent_log(0);
    assert!(
        says.iter().all(|word| log.contains(word)),
        "the agent says {says:?}:\n{log}"
    );
    let later = first.at + Duration::from_millis(500);
    writer.wait_ack(ha, Duration::from_secs(10), later, |a| a.node == 0);
    let acks = writer.stop();
    ha.assert_nothing_lost(0, &acks);
}
