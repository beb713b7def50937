//! Named schedules: each defect found by reading (issue 19, D1–D9) reproduced as a schedule,
//! and every seed the random runs ever failed on. Each must pass. `PGREPL_SIM_SHOW=1` prints
//! a case's trace.

use crate::faults::{Fault, Peer, Policy, Schedule};
use crate::world::Outcome;

/// Runs a named schedule and fails with its explanation when it breaks an invariant.
fn expect_ok(schedule: Schedule) -> Outcome {
    if std::env::var_os("PGREPL_SIM_SHOW").is_some() {
        println!("{schedule}{}", crate::run(&schedule, true).trace.join("\n"));
    }
    let outcome = crate::run(&schedule, false);
    if let Some(violation) = &outcome.violation {
        panic!("{violation}\n{}", crate::explain(&schedule));
    }
    outcome
}

const FIRST_1: Policy = Policy {
    quorum: false,
    num: 1,
};
const FIRST_2: Policy = Policy {
    quorum: false,
    num: 2,
};

fn schedule(seed: u64, nodes: usize, policy: Policy, faults: Vec<(u64, Fault)>) -> Schedule {
    Schedule {
        seed,
        nodes,
        policy,
        faults,
    }
}

#[test]
fn sim_node_loss_of_the_primary_fails_over() {
    let outcome = expect_ok(schedule(
        2,
        3,
        FIRST_1,
        vec![(
            3_000,
            Fault::NodeLoss {
                node: 0,
                down_ms: 5_000,
            },
        )],
    ));
    assert_eq!(outcome.leaders[..2], ["-", "n1"]);
    assert_ne!(outcome.leaders.last().map(String::as_str), Some("n1"));
}

/// D4: the primary's server cannot start again (a bad setting, a full disk): its agent held
/// the key for ever, restarting it every 0.4 s.
#[test]
fn sim_d4_a_primary_that_cannot_start_is_replaced() {
    let outcome = expect_ok(schedule(
        4,
        3,
        FIRST_1,
        vec![
            (
                2_500,
                Fault::CannotStart {
                    node: 0,
                    ms: 120_000,
                },
            ),
            (3_000, Fault::ServerCrash { node: 0 }),
        ],
    ));
    assert_ne!(outcome.leaders.last().map(String::as_str), Some("n1"));
}

/// D1: FIRST 2 of three standbys. n4's agent is down while n1 fails over to n2 or n3, and n4
/// holds old-timeline WAL past the fork; back, it stays a record member until it is rewound.
/// The new primary acknowledges, then dies: ranked by LSN alone, n4 won and the commits of the
/// new timeline were lost.
#[test]
fn sim_d1_a_member_past_the_fork_is_never_elected() {
    let slow = |node| Fault::SlowFsync {
        node,
        ms: 1_000,
        fsync_ms: 4_000,
    };
    expect_ok(schedule(
        1,
        4,
        FIRST_2,
        vec![
            (2_000, slow(1)),
            (2_000, slow(2)),
            // n4 alone receives it before the primary dies.
            (2_200, Fault::BulkWrite { size: 1_000 }),
            (
                2_900,
                Fault::AgentCrash {
                    node: 3,
                    down_ms: 6_000,
                },
            ),
            (
                3_000,
                Fault::NodeLoss {
                    node: 0,
                    down_ms: 2_500,
                },
            ),
            // n4 is back, following the new primary from the old timeline.
            (
                9_500,
                Fault::NodeLoss {
                    node: 1,
                    down_ms: 3_000,
                },
            ),
            (
                9_500,
                Fault::NodeLoss {
                    node: 2,
                    down_ms: 3_000,
                },
            ),
        ],
    ));
}

/// D2: the sync standby replays slowly; the primary's node and the sync standby's server
/// crash together. Restarted, the standby accepts connections while it still replays its own
/// WAL, and published its climbing replay position as final: a less advanced standby won.
#[test]
fn sim_d2_a_restarted_standby_counts_only_once_its_position_is_final() {
    expect_ok(schedule(
        3,
        3,
        FIRST_1,
        vec![
            (
                2_000,
                Fault::SlowReplay {
                    node: 1,
                    ms: 20_000,
                    per_record_ms: 300,
                },
            ),
            (
                2_000,
                Fault::SlowFsync {
                    node: 2,
                    ms: 8_000,
                    fsync_ms: 1_500,
                },
            ),
            (
                6_000,
                Fault::NodeLoss {
                    node: 0,
                    down_ms: 10_000,
                },
            ),
            (6_000, Fault::ServerCrash { node: 1 }),
        ],
    ));
}

/// D3: the elected standby's agent dies between writing the sync record (naming itself
/// leader) and promoting. The record's leader was left out of every later election, the old
/// primary waited for ever and the third node alone was too few: no leader, permanently.
#[test]
fn sim_d3_an_agent_dying_before_it_promotes_leaves_an_electable_cluster() {
    let outcome = expect_ok(schedule(
        5,
        3,
        FIRST_1,
        vec![
            (
                2_000,
                Fault::AgentDiesAfterSyncRecord {
                    node: 1,
                    down_ms: 1_000,
                },
            ),
            (
                2_000,
                Fault::AgentDiesAfterSyncRecord {
                    node: 2,
                    down_ms: 1_000,
                },
            ),
            (
                3_000,
                Fault::NodeLoss {
                    node: 0,
                    down_ms: 4_000,
                },
            ),
        ],
    ));
    assert!(outcome.leaders.len() >= 2, "{:?}", outcome.leaders);
}

/// D5: a policy change: the record grows, synchronous_standby_names follows, then the record
/// shrinks; a walsender that has not applied the reload yet may release a commit by its old
/// configuration after the shrink.
#[test]
fn sim_d5_the_record_shrinks_only_after_every_walsender_applied_the_names() {
    expect_ok(schedule(
        6,
        4,
        FIRST_1,
        vec![
            (
                2_000,
                Fault::SlowReload {
                    ms: 10_000,
                    delay_ms: 450,
                },
            ),
            (3_000, Fault::PolicyChange { policy: FIRST_2 }),
        ],
    ));
}

/// D6: the pause key written while the primary's server is hung: the agent read it but still
/// killed the server as hung.
#[test]
fn sim_d6_a_paused_agent_kills_no_silent_server() {
    expect_ok(schedule(
        7,
        3,
        FIRST_1,
        vec![
            (
                3_000,
                Fault::ServerHang {
                    node: 0,
                    ms: 15_000,
                },
            ),
            (4_000, Fault::Pause { ms: 14_000 }),
        ],
    ));
}

/// D7: the new leader is cut from etcd as it promotes: the fence flag was only set by the next
/// probe, after the promotion's last step, so the watchdog let the deadline pass.
#[test]
fn sim_d7_a_promoted_server_is_fenced_at_its_deadline() {
    expect_ok(schedule(
        8,
        3,
        FIRST_1,
        vec![
            // n2's promotion waits seconds for its replay.
            (
                2_000,
                Fault::SlowReplay {
                    node: 1,
                    ms: 30_000,
                    per_record_ms: 600,
                },
            ),
            (
                3_000,
                Fault::NodeLoss {
                    node: 0,
                    down_ms: 6_000,
                },
            ),
            (
                5_100,
                Fault::Partition {
                    a: Peer::Node(1),
                    b: Peer::Etcd,
                    ms: 6_000,
                },
            ),
        ],
    ));
}

/// D8: another cluster's keys in the same etcd scope (a shared scope and node names, or a
/// restored snapshot): the agents fenced the real primary and followed a foreign record.
#[test]
fn sim_d8_no_agent_acts_on_another_clusters_keys() {
    expect_ok(schedule(
        9,
        3,
        FIRST_1,
        vec![(
            3_000,
            Fault::ForeignCluster {
                leader: 1,
                ms: 4_000,
            },
        )],
    ));
}

/// D9: the primary's agent restarts while its server is healthy: it waited for its own old key
/// to expire, the standbys detached meanwhile and writes stopped (or the key changed hands).
#[test]
fn sim_d9_a_restarted_agent_keeps_its_healthy_primary_leading() {
    let outcome = expect_ok(schedule(
        10,
        3,
        FIRST_1,
        vec![(
            3_000,
            Fault::AgentCrash {
                node: 0,
                down_ms: 200,
            },
        )],
    ));
    assert_eq!(
        outcome.leaders,
        ["-", "n1"],
        "the key changed hands or lapsed"
    );
    assert!(
        outcome.max_gap_ms < 1_000,
        "writes stopped for {} ms",
        outcome.max_gap_ms
    );
}

/// Found by the random runs (seed 1796567308674067538, 5 nodes, ANY 2): under late messages a
/// leader's renewals time out; its watchdog's kill returned after the loop had decided to
/// restart the server, and disarmed the fence for the server it then started, which ran past
/// its deadline; and the leader kept restarting a server the watchdog killed at once.
#[test]
fn sim_seed_1796567308674067538_a_restart_keeps_the_fence_armed() {
    expect_ok(Schedule::generate(1796567308674067538));
}

/// Found by the random runs (seed 1796566883838747186, 4 nodes, ANY 2): the primary's server
/// hung, its agent restarted; the new agent never saw it answer, so its fence was not armed,
/// and with etcd's quorum lost nothing would have stopped it once it ran again.
#[test]
fn sim_seed_1796566883838747186_a_silent_primary_is_fenced_too() {
    expect_ok(Schedule::generate(1796566883838747186));
}

/// Found by the random runs (seed 1796569027280007175, 4 nodes, FIRST 1 → FIRST 2): the elected
/// standby's agent was restarted (the new policy) mid-promotion; the new run wrote a `FIRST 2`
/// record while the server was being promoted with the first run's `FIRST 1` names.
#[test]
fn sim_seed_1796569027280007175_a_record_covers_the_names_a_promotion_brings() {
    expect_ok(Schedule::generate(1796569027280007175));
}

/// Found by the random runs (seed 1796570322591963311, 3 nodes, FIRST 1): a switchover's target
/// wrote its record and died before promoting; the old leader, stopped cleanly and holding every
/// commit it acknowledged, waited for an election its own record's count could not satisfy
/// (the third node was down). The last leader that may have acknowledged anything takes the key
/// back, as when no record is void.
#[test]
fn sim_seed_1796570322591963311_the_last_real_leader_leads_again_after_a_void_record() {
    expect_ok(Schedule::generate(1796570322591963311));
}

/// Found by the random runs (seed 1796570503698698106, 4 nodes, FIRST 2): the primary's agent
/// started again and froze before its first probe; thawed with etcd's quorum gone, its fence
/// was not armed (no probe had said its server was a primary) and the server ran past the
/// deadline. A new agent's fence is armed until a probe says otherwise.
#[test]
fn sim_seed_1796570503698698106_a_new_agent_fences_before_its_first_probe() {
    expect_ok(Schedule::generate(1796570503698698106));
}

/// A primary stuck in uninterruptible I/O: it answers nothing and survives its agent's kill.
/// Its agent held the key while it was stuck; past the start timeout it lets a standby take
/// over, as for a server that does not start.
#[test]
fn sim_a_primary_that_cannot_be_killed_is_replaced() {
    let outcome = expect_ok(schedule(
        11,
        3,
        FIRST_1,
        vec![(
            3_000,
            Fault::ServerStuck {
                node: 0,
                ms: 90_000,
            },
        )],
    ));
    assert_ne!(outcome.leaders.last().map(String::as_str), Some("n1"));
}

/// Found by the random runs (seed 1796571704364298566, 5 nodes, FIRST 2): a sync standby stuck
/// in uninterruptible I/O keeps its walsender, so the primary's commits wait until
/// wal_sender_timeout ends it; the model had no such timeout.
#[test]
fn sim_seed_1796571704364298566_a_stuck_sync_standby_stalls_until_its_walsender_times_out() {
    expect_ok(Schedule::generate(1796571704364298566));
}

/// Found by CI's random run (seed 1796584839759280653, 3 nodes, ANY 1): a model bug. A hang
/// that ended inside a longer stuck I/O woke the server, which then ran past its fence
/// deadline although the kill was pending; the end of one fault no longer wakes a server that
/// another still holds.
#[test]
fn sim_seed_1796584839759280653_a_hang_ending_inside_a_stuck_io_leaves_it_stuck() {
    expect_ok(Schedule::generate(1796584839759280653));
}

// What the 9,000,000-schedule run of 2026-12-06 found besides the model bug above (18
// violations in six kinds, one seed of each kept), and the 2,000,000-schedule run after it (a
// fence deadline). Each failed on the core of that day.

/// 4 nodes, FIRST 2 (liveness): a sync standby stuck in uninterruptible I/O kept the record its
/// agent published before, and elections counted it. A record of a server that stopped answering
/// is marked unknown now, and no election counts it.
#[test]
fn sim_seed_1796577086388321552_a_stuck_standby_counts_in_no_election() {
    expect_ok(Schedule::generate(1796577086388321552));
}

/// Lost commit: a new leader stuck in I/O past the start timeout gave its key back while its
/// commits on the new timeline were the only copy; its record, unknown, now keeps its own rule
/// in force, so nobody without those commits is electable.
#[test]
fn sim_seed_1796577086389696874_a_stuck_new_leader_keeps_its_rule_in_force() {
    expect_ok(Schedule::generate(1796577086389696874));
}

/// One timeline number naming two histories, during a policy change that restarts the agents
/// one by one: a detached standby pointed at the leader again still published "detached".
/// Its agent now publishes that its position may grow before it points it anywhere, and a new
/// leader re-points only standbys that did not detach.
///
/// Then, since an agent marks its record unknown before it promotes, another path: a standby on
/// timeline 1 elected while the frozen leader it replaced had promoted to timeline 2 (it
/// acknowledged nothing: FIRST 2 had no second standby), and its promotion named a second
/// timeline 2. The sync record names the newest timeline a promotion took now, and a promotion
/// goes past it (placeholder history files below it).
#[test]
fn sim_seed_1796577086392288596_a_standby_says_it_attaches_before_it_does() {
    expect_ok(Schedule::generate(1796577086392288596));
}

/// Kill while paused: an agent restarted during a pause, then cut from etcd before its first
/// read, fenced the primary: it did not know of the pause its earlier run had read. An agent
/// reads the pause key as it starts now.
#[test]
fn sim_seed_1796577086393369039_a_restarted_agent_knows_the_pause_at_once() {
    expect_ok(Schedule::generate(1796577086393369039));
}

/// The record did not cover a walsender's names (a policy change): the same stale "detached"
/// record as above.
#[test]
fn sim_seed_1796577086395864259_the_record_covers_after_a_policy_change() {
    expect_ok(Schedule::generate(1796577086395864259));
}

/// Two writers: the primary's agent dead and its sync standby stuck right after its agent
/// pointed it back at the primary; its record still said "detached", and the election went on
/// while the stuck standby could still acknowledge for the old primary.
#[test]
fn sim_seed_1796577086389974248_a_stuck_attached_standby_blocks_the_election() {
    expect_ok(Schedule::generate(1796577086389974248));
}

/// 5 nodes, FIRST 2, a switchover to a standby with slow replay whose agent died while the
/// promotion waited: the next run of the agent found a standby, followed the new leader, and
/// the promotion completed past its fence deadline (timeline 3 beside the leader's 2). A
/// promotion asked of a server is noted beside it now; a run that finds one pending and does
/// not lead stops the server first.
#[test]
fn sim_seed_1796585618647960120_a_pending_promotion_outlives_the_agent() {
    expect_ok(Schedule::generate(1796585618647960120));
}

/// Found by a random run after those fixes (4 nodes, ANY 1 → ANY 2, agents restarting one by
/// one): the earlier leader took its key back and restarted its server with the old policy's
/// names (ANY 1), then wrote the new policy's record (ANY 2), which did not cover them. A
/// leader's first record covers the names its server has too.
#[test]
fn sim_seed_1796590169395474927_a_returning_leaders_first_record_covers_its_old_names() {
    expect_ok(Schedule::generate(1796590169395474927));
}

/// From the 11,000,000-schedule run after the fixes above (5 nodes, ANY 1): the leader decided
/// a switchover's fast shutdown and counted its server as stopped at once, so the watchdog did
/// not fence it when etcd's election outlasted the lease while the shutdown was still under
/// way. The fence stays armed until the stop is done.
#[test]
fn sim_seed_1796590520501056862_a_switchover_stop_keeps_the_fence_armed() {
    expect_ok(Schedule::generate(1796590520501056862));
}

/// The same run (3 nodes, FIRST 1, liveness): a new leader whose server hung while it promoted
/// promoted again, and its second record kept its first in `prior`; once the fence had killed
/// it (the promotion dropped with the restart), that prior record named the lost old primary
/// as a member, and no election could ever pass. A leader's own earlier record is void (it is
/// still in recovery) and stays out of `prior`.
#[test]
fn sim_seed_1796590520502049046_a_leaders_own_earlier_record_is_no_prior() {
    expect_ok(Schedule::generate(1796590520502049046));
}

/// The same run (4 nodes, FIRST 2): a model bug. The end of one stuck I/O let a pending kill
/// land, and woke the server, while a second, longer stuck I/O still held it; it then ran past
/// its fence. The pending kill now lands when the last fault holding the server ends.
#[test]
fn sim_seed_1796590520493525051_a_kill_waits_for_the_last_stuck_io() {
    expect_ok(Schedule::generate(1796590520493525051));
}

/// Found by a random run after those (3 nodes, ANY 1): the new leader's agent froze right after
/// pg_promote, while its member record still said "standby"; once another cluster's keys had
/// come and gone, the old leader took its record for void (a leader that never promoted) and
/// led again on timeline 1, losing what the new one had acknowledged on timeline 2. An agent
/// marks its record unknown before it asks for a promotion.
#[test]
fn sim_seed_1796596999490109745_a_record_says_promoting_before_the_promotion() {
    expect_ok(Schedule::generate(1796596999490109745));
}

/// Found by the 7,000,000-schedule long run (messages late, the primary lost, another
/// cluster's keys for a while): the elected standby's publish of its record as unknown, before
/// the promotion, timed out and landed late; the agent took it for not done, never promoted,
/// and its next probes matched the record it believed etcd held, so etcd kept "unknown" for
/// ever and every election waited for it. A failed publish leaves the record unsure now: the
/// next probe publishes whatever it finds.
#[test]
fn sim_seed_1796602790415241593_a_publish_that_timed_out_may_still_land() {
    expect_ok(Schedule::generate(1796602790415241593));
}
