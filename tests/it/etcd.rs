//! A real three-member etcd (`support::etcd`) keeps quorum with one member down, loses it with
//! two, and a restarted member rejoins.

use std::time::Duration;

use crate::support::etcd::EtcdCluster;
use crate::support::eventually;

#[test]
fn a_three_member_etcd_keeps_quorum_with_one_member_down() {
    let mut etcd = EtcdCluster::start(3);
    assert!(etcd.endpoints().split(',').count() == 3);
    etcd.kill(2);
    eventually(
        "the two members left to keep their leader",
        Duration::from_secs(10),
    )
    .until(|| etcd.healthy(0) && etcd.healthy(1));
    etcd.kill(1);
    // Without quorum /health turns false within an election timeout or so.
    eventually(
        "the lone member to stop reporting health",
        Duration::from_secs(15),
    )
    .every(Duration::from_millis(200))
    .until(|| !etcd.healthy(0));
    etcd.restart(1);
    assert!(etcd.healthy(0) && etcd.healthy(1));
}
