//! Who may take over when no leader holds the key: the members of the sync record that answer,
//! whether enough of them answer for one of them to hold every acknowledged commit, and the
//! most advanced of them. Pure; `decide` runs it on every agent and `requests` for the commands,
//! so the agents and `pgrepl failover` pick the same node for the same reasons.
//!
//! The argument: proto-notes/08-ha.md, "Zero acknowledged loss".

use crate::cluster::plan::{plan_failover, FailoverOptions, NodeProbe};

use super::records::{MemberRecord, RoleRequest, SyncRecord};

/// Who may be promoted: each acknowledged commit is on at least `num` of the record's `m`
/// members, so any `m - num + 1` of them include one holding it, and on one timeline the most
/// advanced of those holds them all. Only detached members count: their positions are final.
pub fn candidate<'r>(record: &SyncRecord, members: &'r [MemberRecord]) -> Result<&'r str, String> {
    let listed: Vec<&String> = record
        .members
        .iter()
        .filter(|m| **m != record.leader)
        .collect();
    if listed.is_empty() {
        return Err(
            "the sync record lists no standby: no standby can be promoted without loss".into(),
        );
    }
    let live = |name: &String| {
        members
            .iter()
            .find(|r| &r.node == name && r.server.running && r.server.in_recovery)
    };
    let pending: Vec<&str> = listed
        .iter()
        .filter_map(|n| live(n))
        .filter(|r| !r.server.detached)
        .map(|r| r.node.as_str())
        .collect();
    if !pending.is_empty() {
        return Err(format!("waiting for {} to detach", pending.join(", ")));
    }
    let eligible: Vec<&MemberRecord> = listed.iter().filter_map(|n| live(n)).collect();
    let need = (listed.len() + 1).saturating_sub(record.num.max(1) as usize);
    if eligible.len() < need {
        return Err(format!(
            "{} of the sync record's {} members answer and {need} are needed ({} {} of them may hold a commit alone)",
            eligible.len(),
            listed.len(),
            record.method,
            record.num
        ));
    }
    // The manual failover's choice among them: the most advanced. It keeps the last of equals,
    // so the probes go in reverse for a tie to go to the policy's first.
    let probes: Vec<NodeProbe> = eligible
        .iter()
        .rev()
        .map(|r| NodeProbe {
            name: r.node.clone(),
            reachable: true,
            in_recovery: Some(true),
            timeline: r.server.timeline,
            received_lsn: r.server.position,
            replayed_lsn: None,
        })
        .collect();
    let plan = plan_failover(&record.leader, &probes, &FailoverOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(eligible
        .iter()
        .map(|r| r.node.as_str())
        .find(|n| *n == plan.target)
        .expect("the plan's target is one of the probes"))
}

/// The election's choice: the most advanced of enough answering members (`candidate`), or the
/// one a failover request names when it is as advanced, on the same timeline: it then holds
/// every acknowledged commit too.
pub fn elect<'r>(
    record: &SyncRecord,
    members: &'r [MemberRecord],
    request: Option<&RoleRequest>,
) -> Result<&'r str, String> {
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

/// `Ok` when `to` is a detached live member of the record at least as far as `best`.
pub fn as_safe_as(
    record: &SyncRecord,
    members: &[MemberRecord],
    to: &str,
    best: &str,
) -> Result<(), String> {
    if !record.members.iter().any(|m| m == to) || to == record.leader {
        return Err(format!(
            "`{to}` is not in the sync record ({}): it may lack acknowledged commits",
            record.members.join(", ")
        ));
    }
    let find = |name: &str| members.iter().find(|m| m.node == name);
    let Some(target) = find(to).filter(|m| m.server.running && m.server.in_recovery) else {
        return Err(format!("`{to}` is not a running standby with a live agent"));
    };
    let best = find(best).expect("the candidate is a member");
    if target.server.timeline != best.server.timeline
        || target.server.position < best.server.position
    {
        let (at, top) = (target.server.position, best.server.position);
        return Err(format!(
            "`{to}` (at {}) is behind `{}` (at {}): promoting it would lose acknowledged commits",
            at.map_or("?".into(), |l| l.to_string()),
            best.node,
            top.map_or("?".into(), |l| l.to_string()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::records::ServerState;
    use crate::ids::TimelineId;
    use crate::Lsn;

    fn standby(node: &str, at: u64, detached: bool) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            paused: false,
            server: ServerState {
                running: true,
                in_recovery: true,
                timeline: Some(TimelineId::new(1)),
                position: Some(Lsn::new(at)),
                detached,
                follows: (!detached).then(|| "p".into()),
            },
        }
    }

    fn record(leader: &str, method: &str, num: u32, members: &[&str]) -> SyncRecord {
        SyncRecord {
            leader: leader.into(),
            method: method.into(),
            num,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
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

}
