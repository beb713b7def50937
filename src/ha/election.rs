//! Who may take over when no leader holds the key: the sync records in force, whether enough of
//! their members answer for one of them to hold every acknowledged commit, and the most advanced
//! of them. Pure; `decide` runs it on every agent and `requests` for the commands, so the agents
//! and `pgrepl failover` pick the same node for the same reasons.
//!
//! The argument: proto-notes/08-ha.md, "Zero acknowledged loss".

use super::records::{MemberRecord, RoleRequest, SyncRecord};
use crate::sync_policy::SyncMethod;
use crate::Lsn;

/// Why nobody may be elected now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    #[error("the sync record lists no standby: no standby can be promoted without loss")]
    NoStandby,
    /// Members of the records in force whose servers still receive from the lost leader: their
    /// positions are not final yet.
    #[error("waiting for {} to detach", .0.join(", "))]
    Detaching(Vec<String>),
    /// Too few of a record's standbys answer for one of them to hold each of its acknowledged
    /// commits; `earlier`: the leader the record was for, when it is not the newest.
    #[error(
        "{answering} of the sync record's {listed} members answer and {need} are needed ({method} {num} of them may hold a commit alone{})",
        .earlier.as_ref().map_or(String::new(), |leader| format!(", for `{leader}`'s commits"))
    )]
    TooFewAnswer {
        answering: usize,
        listed: usize,
        need: usize,
        method: SyncMethod,
        num: u32,
        earlier: Option<String>,
    },
}

/// Why a node asked for is not as safe to promote as the election's choice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAsSafe {
    #[error("`{to}` is not in the sync record ({}): it may lack acknowledged commits", .members.join(", "))]
    NotInRecord { to: String, members: Vec<String> },
    #[error("`{to}` is not a running standby with a live agent")]
    NotLive { to: String },
    #[error(
        "`{to}` (at {}) is behind `{best}` (at {}): promoting it would lose acknowledged commits",
        position(.at), position(.best_at)
    )]
    Behind {
        to: String,
        at: Option<Lsn>,
        best: String,
        best_at: Option<Lsn>,
    },
}

fn position(at: &Option<Lsn>) -> String {
    at.map_or("?".into(), |l| l.to_string())
}

/// The records an election must satisfy: the newest, and those of earlier leaders it still
/// carries; only those when the newest's leader still answers as a standby, since it never
/// promoted and so acknowledged nothing (a leader that promoted is a standby again only after a
/// rejoin, which needs a newer leader, which writes a newer record first).
pub fn rules_in_force<'r>(record: &'r SyncRecord, members: &[MemberRecord]) -> Vec<&'r SyncRecord> {
    let never_promoted = live(members, &record.leader).is_some();
    let newest = (!never_promoted).then_some(record);
    newest.into_iter().chain(record.prior.iter()).collect()
}

/// `name`'s record when its agent is alive and its server a running standby that answers it.
fn live<'m>(members: &'m [MemberRecord], name: &str) -> Option<&'m MemberRecord> {
    members
        .iter()
        .find(|r| r.node == name && r.server.running && r.server.in_recovery && !r.server.unknown)
}

/// A record's standbys (its leader never counts for itself).
fn standbys(rule: &SyncRecord) -> impl Iterator<Item = &String> {
    rule.policy.names.iter().filter(move |m| **m != rule.leader)
}

/// Whether a live standby of the rules in force is on the timeline the newest record's leader
/// promoted to. It holds every commit the earlier records' leaders acknowledged: that leader
/// held them all when it promoted (it was elected), and the timeline's history runs through its
/// promotion point. A timeline number names one history (rule 9 of proto-notes/08-ha.md).
fn follows_the_promotion(
    record: &SyncRecord,
    rules: &[&SyncRecord],
    members: &[MemberRecord],
) -> bool {
    let promoted = rules.first().is_some_and(|r| std::ptr::eq(*r, record));
    let Some(timeline) = record.timeline.filter(|_| promoted) else {
        return false;
    };
    rules
        .iter()
        .flat_map(|r| standbys(r))
        .filter_map(|n| live(members, n))
        .any(|m| m.server.timeline == Some(timeline))
}

/// Each acknowledged commit of a rule is on at least `num` of its `m` standbys, so any
/// `m - num + 1` of them include one holding it. `Err` says which rule lacks answers. The
/// earlier records need none once a member follows the newest one's promotion.
fn enough_answer(
    record: &SyncRecord,
    rules: &[&SyncRecord],
    members: &[MemberRecord],
) -> Result<(), NoCandidate> {
    if rules.is_empty() || rules.iter().any(|r| standbys(r).next().is_none()) {
        return Err(NoCandidate::NoStandby);
    }
    let rules = if follows_the_promotion(record, rules, members) {
        &rules[..1]
    } else {
        rules
    };
    for rule in rules {
        let listed = standbys(rule).count();
        let answering = standbys(rule)
            .filter(|n| live(members, n).is_some())
            .count();
        let need = (listed + 1).saturating_sub(rule.policy.num.max(1) as usize);
        if answering < need {
            return Err(NoCandidate::TooFewAnswer {
                answering,
                listed,
                need,
                method: rule.policy.method,
                num: rule.policy.num,
                earlier: (rule.leader != rules[0].leader).then(|| rule.leader.clone()),
            });
        }
    }
    Ok(())
}

/// Whether an election could pick a node now if the leader let go: enough members of every
/// record in force answer (whether or not they detached yet).
pub fn electable(record: &SyncRecord, members: &[MemberRecord]) -> Result<(), NoCandidate> {
    enough_answer(record, &rules_in_force(record, members), members)
}

/// Who may be promoted: the most advanced answering member of the records in force, once
/// enough of each answer. Only detached members count: their positions are final. Ranked by
/// timeline first: a member on an older timeline, however far, holds none of the WAL written
/// on the newer one (it may be past the fork), and every acknowledged commit of the newest
/// record is on it. Ties go to the policy's order.
pub fn candidate<'r>(
    record: &SyncRecord,
    members: &'r [MemberRecord],
) -> Result<&'r str, NoCandidate> {
    let rules = rules_in_force(record, members);
    let mut names: Vec<&String> = Vec::new();
    for rule in &rules {
        for name in standbys(rule) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let eligible: Vec<&'r MemberRecord> = names.iter().filter_map(|n| live(members, n)).collect();
    let pending: Vec<String> = eligible
        .iter()
        .filter(|r| !r.server.detached)
        .map(|r| r.node.clone())
        .collect();
    if !pending.is_empty() {
        return Err(NoCandidate::Detaching(pending));
    }
    enough_answer(record, &rules, members)?;
    let best = eligible
        .iter()
        .rev()
        .max_by_key(|r| (r.server.timeline, r.server.position))
        .expect("enough answer, so one does");
    Ok(best.node.as_str())
}

/// The election's choice: the most advanced of enough answering members (`candidate`), or the
/// one a failover request names when it is as advanced, on the same timeline: it then holds
/// every acknowledged commit too.
pub fn elect<'r>(
    record: &SyncRecord,
    members: &'r [MemberRecord],
    request: Option<&RoleRequest>,
) -> Result<&'r str, NoCandidate> {
    let best = candidate(record, members)?;
    let wanted = request.filter(|r| r.from == record.leader && r.to != best);
    match wanted {
        Some(r) if as_safe_as(record, members, &r.to, best).is_ok() => Ok(members
            .iter()
            .map(|m| m.node.as_str())
            .find(|n| *n == r.to)
            .expect("as_safe_as found it")),
        _ => Ok(best),
    }
}

/// `Ok` when `to` is a live member of a record in force, as far as `best` on its timeline.
pub fn as_safe_as(
    record: &SyncRecord,
    members: &[MemberRecord],
    to: &str,
    best: &str,
) -> Result<(), NotAsSafe> {
    let rules = rules_in_force(record, members);
    if !rules.iter().any(|r| standbys(r).any(|m| m == to)) {
        return Err(NotAsSafe::NotInRecord {
            to: to.to_owned(),
            members: record.policy.names.clone(),
        });
    }
    let Some(target) = live(members, to) else {
        return Err(NotAsSafe::NotLive { to: to.to_owned() });
    };
    let best = members
        .iter()
        .find(|m| m.node == best)
        .expect("the candidate is a member");
    if target.server.timeline != best.server.timeline
        || target.server.position < best.server.position
    {
        return Err(NotAsSafe::Behind {
            to: to.to_owned(),
            at: target.server.position,
            best: best.node.clone(),
            best_at: best.server.position,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::records::ServerState;
    use crate::ids::TimelineId;
    use crate::Lsn;

    fn member(node: &str, timeline: u32, at: u64) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            paused: false,
            server: ServerState {
                running: true,
                in_recovery: true,
                timeline: Some(TimelineId::new(timeline)),
                position: Some(Lsn::new(at)),
                detached: true,
                follows: None,
                unknown: false,
            },
        }
    }

    fn standby(node: &str, at: u64, detached: bool) -> MemberRecord {
        let mut m = member(node, 1, at);
        m.server.detached = detached;
        m
    }

    fn record(leader: &str, method: &str, num: u32, members: &[&str]) -> SyncRecord {
        SyncRecord::of(leader, method, num, members)
    }

    #[test]
    fn quorum_arithmetic_for_any_and_first() {
        let three = ["a", "b", "c"];
        let members = |names: &[(&str, u64)]| -> Vec<MemberRecord> {
            names.iter().map(|(n, at)| standby(n, *at, true)).collect()
        };
        // ANY 2 of 3: two answering members intersect every quorum.
        let any2 = record("p", "ANY", 2, &three);
        assert_eq!(candidate(&any2, &members(&[("a", 5), ("c", 9)])), Ok("c"));
        assert!(candidate(&any2, &members(&[("a", 5)])).is_err());
        // FIRST 3 of 3: every commit is on all, one member is enough.
        let first3 = record("p", "FIRST", 3, &three);
        assert_eq!(candidate(&first3, &members(&[("b", 5)])), Ok("b"));
        // ANY 1 of 3: all three must answer.
        let any1 = record("p", "ANY", 1, &three);
        assert!(candidate(&any1, &members(&[("a", 5), ("b", 6)])).is_err());
        // A tie goes to the policy's order.
        assert_eq!(
            candidate(&any1, &members(&[("c", 5), ("b", 5), ("a", 5)])),
            Ok("a")
        );
        // Non-members never count, however advanced.
        assert!(candidate(&any2, &members(&[("x", 99), ("a", 5)])).is_err());
        // A member whose server is down does not count either.
        let mut down = members(&[("a", 5), ("b", 6)]);
        down[1].server.running = false;
        assert!(candidate(&any2, &down).is_err());
        // No standby recorded: asynchronous replication can lose commits, nobody is promoted.
        assert!(candidate(&record("p", "FIRST", 1, &[]), &members(&[("a", 5)])).is_err());
    }

    /// D1: a member that stayed on the old timeline past the fork has the higher LSN but none
    /// of the new timeline's commits.
    #[test]
    fn a_member_on_an_older_timeline_loses_to_one_on_the_newest_whatever_its_lsn() {
        let rule = record("b", "FIRST", 2, &["a", "c", "d"]);
        let members = [member("a", 2, 500), member("d", 1, 9_000)];
        assert_eq!(candidate(&rule, &members), Ok("a"));
        assert!(as_safe_as(&rule, &members, "d", "a").is_err());
    }

    /// A new leader froze before its record shrank to its own policy: its predecessor's record,
    /// still in `prior`, lists the frozen leader, and would wait for it for ever. A member that
    /// follows the new leader's timeline holds all that predecessor acknowledged: the new leader
    /// did when it promoted.
    #[test]
    fn a_member_on_the_promoted_timeline_answers_for_the_records_before() {
        let old = record("a", "FIRST", 1, &["b", "c"]);
        let new = record("b", "FIRST", 1, &["a", "c"])
            .after(&[&old])
            .on_timeline(Some(TimelineId::new(2)));
        let members = [member("a", 2, 500), member("c", 2, 600)];
        assert_eq!(candidate(&new, &members), Ok("c"));
        // Not on that timeline (it has not followed yet): the old record waits for `b`.
        let behind = [member("a", 1, 300), member("c", 1, 400)];
        assert!(candidate(&new, &behind).is_err());
        // Without a recorded timeline, nothing says which one the leader promoted to.
        let unrecorded = record("b", "FIRST", 1, &["a", "c"]).after(&[&old]);
        assert!(candidate(&unrecorded, &members).is_err());
    }

    /// D3: the elected standby wrote its record, then its agent died before it promoted: it
    /// answers as a standby again, so it acknowledged nothing and the earlier leader's record
    /// alone decides, with the dead primary not needed.
    #[test]
    fn a_leader_that_never_promoted_leaves_its_predecessors_record_in_force() {
        let old = record("a", "FIRST", 1, &["b", "c"]);
        let new = record("b", "FIRST", 1, &["a", "c"]).after(&[&old]);
        let both = [member("b", 1, 300), member("c", 1, 200)];
        assert_eq!(rules_in_force(&new, &both), vec![&new.prior[0]]);
        assert_eq!(candidate(&new, &both), Ok("b"));
        // If it may have promoted (its agent is gone), both records hold: a is needed too.
        let without_b = [member("c", 1, 200)];
        assert_eq!(rules_in_force(&new, &without_b).len(), 2);
        assert!(candidate(&new, &without_b).is_err());
        assert!(electable(&new, &without_b).is_err());
        assert!(electable(&new, &both).is_ok());
    }
}
