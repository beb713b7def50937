//! An HAProxy configuration in front of the agents, in the shape of Patroni's (`option httpchk`
//! on `/primary` and `/replica`, one `server NAME HOST:PORT … check port API_PORT` line per
//! node), so that what operators know of Patroni's holds here. Pure: text from addresses.
//!
//! The check timing is tighter than Patroni's example (`inter 3s fall 3 rise 2`), which alone
//! adds up to 9 s before a dead primary leaves the write port and 6 s before the new one joins
//! it, longer than the failover itself (about 2.5 s). Here a server joins after one passing
//! check (`rise 1`: `/primary` answers 200 only on the lease holder whose own probe just saw a
//! running primary, so one answer is already a strong signal) and leaves after two failing
//! ones 500 ms apart (`fall 2`: one lost check does not cut every session); a server in
//! transition or down is checked every 250 ms (`fastinter`, `downinter`), so a new primary
//! joins within 250 ms of its agent's first 200. `on-marked-down shutdown-sessions` closes the sessions
//! to a server that left, so no client keeps writing to a former primary.
//!
//! With the cluster's TLS the agents' API is HTTPS: the checks then speak TLS, verify the
//! agent's certificate against the cluster CA and its node's name (`check-ssl verify required
//! ca-file … verifyhost NODE`), so a forged health answer cannot route writes.

use std::net::SocketAddr;

/// One node, as the proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// The server's address (host and port).
    pub host: String,
    pub port: u16,
    /// Where its agent answers the health checks (an address, or a name the resolver knows).
    pub api_host: String,
    pub api_port: u16,
}

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub bind: String,
    pub write_port: u16,
    pub read_port: u16,
    /// HAProxy's stats socket, which says which servers each port reaches (`[proxy]`'s).
    pub stats_socket: Option<std::path::PathBuf>,
    /// A DNS server that names the backends (docker's on a user network): each name is
    /// resolved again every second, since a container that comes back may have another
    /// address, and a name that does not resolve yet leaves its server down, not HAProxy.
    pub resolver: Option<SocketAddr>,
    /// The cluster CA as HAProxy reads it, when the agents' API is HTTPS.
    pub api_ca: Option<std::path::PathBuf>,
}

pub fn config(listen: &Listen, backends: &[Backend]) -> String {
    let mut out = String::from(
        "# Written by pgrepl: the write port reaches the primary, the read port the standbys;\n\
         # each agent's HTTP API says which is which.\n\
         global\n    maxconn 100\n",
    );
    if let Some(socket) = &listen.stats_socket {
        out.push_str(&format!(
            "    stats socket {} mode 600 level user\n",
            socket.display()
        ));
    }
    out.push_str(
        "\ndefaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n\
         \x20   timeout server 30m\n    timeout check 1s\n",
    );
    let resolve = match listen.resolver {
        Some(dns) => {
            out.push_str(&format!(
                "\nresolvers cluster\n    nameserver dns {dns}\n    timeout resolve 1s\n    hold valid 1s\n"
            ));
            " resolvers cluster init-addr last,libc,none"
        }
        None => "",
    };
    for (section, port, path, balance) in [
        ("primary", listen.write_port, "/primary", None),
        ("replicas", listen.read_port, "/replica", Some("roundrobin")),
    ] {
        out.push_str(&format!(
            "\nlisten {section}\n    bind {}:{port}\n",
            listen.bind
        ));
        if let Some(balance) = balance {
            out.push_str(&format!("    balance {balance}\n"));
        }
        out.push_str(&format!(
            "    option httpchk OPTIONS {path}\n    http-check expect status 200\n    \
             default-server inter 500ms fastinter 250ms downinter 250ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        ));
        for b in backends {
            // `check port` alone when the agent shares the server's address, as Patroni's has it.
            let addr = if b.api_host == b.host {
                String::new()
            } else {
                format!(" addr {}", b.api_host)
            };
            let tls = match &listen.api_ca {
                Some(ca) => format!(
                    " check-ssl verify required ca-file {} verifyhost {}",
                    ca.display(),
                    b.name
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "    server {} {}:{} maxconn 100 check{addr} port {}{tls}{resolve}\n",
                b.name, b.host, b.port, b.api_port
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_patronis_shape_one_server_line_per_node_checked_on_the_agent() {
        let backends = [
            Backend {
                name: "pg_master".into(),
                host: "127.0.0.1".into(),
                port: 54320,
                api_host: "127.0.0.1".into(),
                api_port: 8008,
            },
            Backend {
                name: "pg_slave".into(),
                host: "10.0.0.2".into(),
                port: 5432,
                api_host: "10.0.0.9".into(),
                api_port: 8008,
            },
        ];
        let listen = Listen {
            bind: "127.0.0.1".into(),
            write_port: 5000,
            read_port: 5001,
            stats_socket: None,
            resolver: None,
            api_ca: None,
        };
        let text = config(&listen, &backends);
        assert!(text.contains(
            "listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n"
        ), "{text}");
        assert!(text.contains("listen replicas\n    bind 127.0.0.1:5001\n    balance roundrobin\n    option httpchk OPTIONS /replica\n"), "{text}");
        assert!(text.contains("on-marked-down shutdown-sessions"));
        assert_eq!(
            text.matches("server pg_master 127.0.0.1:54320 maxconn 100 check port 8008\n")
                .count(),
            2
        );
        assert_eq!(
            text.matches(
                "server pg_slave 10.0.0.2:5432 maxconn 100 check addr 10.0.0.9 port 8008\n"
            )
            .count(),
            2
        );
        assert!(!text.contains("resolvers"), "{text}");
    }

    /// On a container network, by name, resolved again as containers come and go.
    #[test]
    fn names_on_a_container_network_are_resolved_again() {
        let backends = [Backend {
            name: "pg_master".into(),
            host: "pg_master".into(),
            port: 5432,
            api_host: "pg_master".into(),
            api_port: 8008,
        }];
        let listen = Listen {
            bind: "0.0.0.0".into(),
            write_port: 5000,
            read_port: 5001,
            stats_socket: None,
            resolver: Some("127.0.0.11:53".parse().unwrap()),
            api_ca: Some("/etc/haproxy/ca.crt".into()),
        };
        let text = config(&listen, &backends);
        assert!(
            text.contains("resolvers cluster\n    nameserver dns 127.0.0.11:53\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("server pg_master pg_master:5432 maxconn 100 check port 8008 check-ssl verify required ca-file /etc/haproxy/ca.crt verifyhost pg_master resolvers cluster init-addr last,libc,none\n")
                .count(),
            2,
            "{text}"
        );
    }
}
