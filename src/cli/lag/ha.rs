//! The HA section under `pgrepl status` for a cluster with `[ha]`: the leader and its lease,
//! each node's agent, and who could be promoted now.

use pgrepl::ha::records::ServerState;
use pgrepl::ha::status::HaStatus;

use super::render::{Align, Table};

pub(super) fn section(ha: &HaStatus) -> String {
    let mut out = format!("\nHA (etcd {}, scope `{}`)\n", ha.etcd.join(","), ha.scope);
    if let Some(error) = &ha.error {
        out.push_str(&format!("  {error}: leader, lease and agents unknown\n"));
        return out;
    }
    let lease = match ha.lease_left_s {
        Some(left) => format!(", lease {left} s left of {} s", ha.lease_ttl_s),
        None => String::new(),
    };
    out.push_str(&match &ha.leader {
        Some(leader) => format!("  leader `{leader}`{lease}"),
        None => "  no leader (an election may be under way)".to_owned(),
    });
    out.push_str(if ha.paused {
        "; PAUSED: the agents take no automatic action\n"
    } else {
        "; automatic failover is on\n"
    });
    let mut table = Table::new(&[
        ("AGENT", 24, Align::Left),
        ("HEALTH", 6, Align::Left),
        ("API", 21, Align::Left),
        ("ITS SERVER", 0, Align::Left),
    ]);
    for agent in &ha.agents {
        table.row(vec![
            agent.node.clone(),
            if agent.alive { "alive" } else { "DOWN" }.to_owned(),
            agent.api.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            match &agent.server {
                Some(server) => describe(server),
                None => "no member record: agent stopped, or its lease expired".to_owned(),
            },
        ]);
    }
    out.push_str(&table.render());
    let record = ha
        .sync
        .as_ref()
        .map(|s| match s.policy.is_synchronous() {
            true => format!(" (sync record: {})", s.policy),
            false => " (sync record: asynchronous)".to_owned(),
        })
        .unwrap_or_default();
    out.push_str(&if ha.promotable.is_empty() {
        format!("  promotable now: none{record}\n")
    } else {
        format!("  promotable now: {}{record}\n", ha.promotable.join(", "))
    });
    if let Some(proxy) = &ha.proxy {
        out.push_str(&proxy_line(proxy));
    }
    out
}

/// Which node each of HAProxy's ports reaches now.
fn proxy_line(proxy: &pgrepl::ha::status::ProxyStatus) -> String {
    let Some(routes) = &proxy.routes else {
        let why = proxy.error.as_deref().unwrap_or("unknown");
        return format!(
            "  proxy: writes {}, reads {}: {why}\n",
            proxy.write, proxy.read
        );
    };
    let reach = |nodes: &[String]| {
        if nodes.is_empty() {
            "no server (its checks fail)".to_owned()
        } else {
            nodes.join(", ")
        }
    };
    format!(
        "  proxy: writes {} -> {}; reads {} -> {}\n",
        proxy.write,
        reach(&routes.write),
        proxy.read,
        reach(&routes.read)
    )
}

/// What an agent last said about its server.
fn describe(server: &ServerState) -> String {
    if !server.running {
        return "server stopped".to_owned();
    }
    let mut text = if !server.in_recovery {
        "primary".to_owned()
    } else if let Some(upstream) = &server.follows {
        format!("standby of {upstream}")
    } else {
        "standby".to_owned()
    };
    if server.unknown {
        text.push_str(" (as last seen: it does not answer its agent, or is being promoted)");
    } else if server.in_recovery && server.detached {
        text.push_str(" (detached)");
    }
    if let Some(tl) = server.timeline {
        text.push_str(&format!(", timeline {tl}"));
    }
    if let Some(position) = &server.position {
        text.push_str(&format!(", at {position}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrepl::ha::status::AgentHealth;

    fn status() -> HaStatus {
        HaStatus {
            scope: "pgrepl".into(),
            etcd: vec!["http://127.0.0.1:2379".into()],
            error: None,
            leader: Some("pg_master".into()),
            lease_ttl_s: 2,
            lease_left_s: Some(1),
            paused: false,
            agents: vec![
                AgentHealth {
                    node: "pg_master".into(),
                    alive: true,
                    server: Some(ServerState {
                        running: true,
                        in_recovery: false,
                        timeline: Some(pgrepl::ids::TimelineId::new(1)),
                        position: Some("0/3000148".parse().unwrap()),
                        detached: false,
                        follows: None,
                        unknown: false,
                    }),
                    api: Some("127.0.0.1:20123".parse().unwrap()),
                },
                AgentHealth {
                    node: "pg_slave".into(),
                    alive: false,
                    server: None,
                    api: None,
                },
            ],
            sync: None,
            promotable: Vec::new(),
            proxy: None,
        }
    }

    #[test]
    fn the_proxy_line_names_the_node_behind_each_port() {
        let mut ha = status();
        ha.proxy = Some(pgrepl::ha::status::ProxyStatus {
            write: "127.0.0.1:5000".parse().unwrap(),
            read: "127.0.0.1:5001".parse().unwrap(),
            routes: Some(pgrepl::ha::proxy::Routes {
                write: vec!["pg_master".into()],
                read: Vec::new(),
            }),
            error: None,
        });
        let text = section(&ha);
        assert!(
            text.contains(
                "proxy: writes 127.0.0.1:5000 -> pg_master; reads 127.0.0.1:5001 -> no server (its checks fail)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_section_names_leader_lease_and_agents() {
        let text = section(&status());
        assert!(
            text.contains("leader `pg_master`, lease 1 s left of 2 s"),
            "{text}"
        );
        assert!(text.contains("primary, timeline 1, at 0/3000148"), "{text}");
        assert!(text.contains("DOWN"), "{text}");
        assert!(text.contains("127.0.0.1:20123"), "{text}");
        assert!(text.contains("promotable now: none"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }

    #[test]
    fn an_unanswering_etcd_is_one_line() {
        let mut ha = status();
        ha.error = Some("etcd did not answer within 1s".into());
        let text = section(&ha);
        assert_eq!(text.trim().lines().count(), 2, "{text}");
        assert!(text.contains("etcd did not answer within 1s: leader, lease and agents unknown"));
    }
}
