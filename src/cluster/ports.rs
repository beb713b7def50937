//! Is a node's host port free for its server? Only a LISTENER makes it taken: a client
//! connection whose local end happens to have that port (the default ports lie in Linux's
//! ephemeral range) goes away by itself, so a bind that fails without a listener is retried.
//!
//! Listeners are read from /proc/net/tcp and tcp6, where each socket's state is shown; the
//! parsing and the decision are pure, the retry loop sits on top.

use std::time::Duration;

use super::runtime_error::RuntimeError;
use super::spec::NodeSpec;

/// Linux's default `net.ipv4.ip_local_port_range`.
pub const EPHEMERAL: (u16, u16) = (32768, 60999);
/// How long a bind may keep failing without a listener before pgrepl gives up.
const CLIENT_HOLD_WAIT: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(100);
/// `st` of a listening socket in /proc/net/tcp*.
const TCP_LISTEN: &str = "0A";

/// What a check of the port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    Free,
    /// Something listens on it: a server of someone else's (or ours, which callers rule out
    /// first by asking the runtime whether the node runs).
    Listener,
    /// The bind failed with no listener: a client socket's local end, gone soon.
    HeldByClient,
}

/// The decision from what /proc shows and whether a test bind succeeded.
pub fn decide(listener: bool, bind_ok: bool) -> PortState {
    match (listener, bind_ok) {
        (true, _) => PortState::Listener,
        (false, true) => PortState::Free,
        (false, false) => PortState::HeldByClient,
    }
}

/// Whether `table` (the text of /proc/net/tcp or tcp6) has a socket listening on `port` at an
/// address a server on 127.0.0.1 would collide with: loopback or the wildcard. (For a node on
/// another address, a listener there only shows as a failed bind.)
pub fn listens(table: &str, port: u16) -> bool {
    !listener_inodes(table, port).is_empty()
}

/// The socket inodes of those listeners (field 10 of each row), to find who holds them.
fn listener_inodes(table: &str, port: u16) -> Vec<u64> {
    listener_rows(table, port)
        .into_iter()
        .filter_map(|(_, inode)| inode.parse().ok())
        .collect()
}

/// Owner uid and socket inode (fields 8 and 10) of each listener on `port` that collides with
/// loopback.
fn listener_rows(table: &str, port: u16) -> Vec<(&str, &str)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            let (uid, inode) = (fields.get(7)?, fields.get(9)?);
            let (address, hex_port) = local.split_once(':')?;
            (*state == TCP_LISTEN
                && u16::from_str_radix(hex_port, 16) == Ok(port)
                && collides_with_loopback(address))
            .then_some((*uid, *inode))
        })
        .collect()
}

/// The kernel prints addresses as native-endian 32-bit words in hex: 127.0.0.1 is `0100007F`
/// on little-endian machines, `7F000001` on big-endian ones.
fn collides_with_loopback(address: &str) -> bool {
    let loopback = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
    let mapped = format!(
        "0000000000000000{:08X}{loopback}",
        u32::from_ne_bytes([0, 0, 0xff, 0xff])
    );
    address.chars().all(|c| c == '0') || address == loopback || address == mapped
}

fn tcp_tables() -> impl Iterator<Item = String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
}

fn listener_on(port: u16) -> bool {
    tcp_tables().any(|table| listens(&table, port))
}

/// `pid N (comm)` of a process holding the listener on `port`, when /proc lets us see its
/// file descriptors (our own processes, or all as root): the operator then knows what to stop.
fn holder(port: u16) -> Option<String> {
    let wanted: Vec<String> = tcp_tables()
        .flat_map(|table| listener_inodes(&table, port))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
}

/// A listener whose process /proc does not show (another PID namespace, or one exiting): what
/// the socket table says of it, its owner's uid and inode, so the holder can still be found.
/// `None` when the table shows none any more.
fn seen_holder(port: u16) -> Option<String> {
    let owners: Vec<String> = tcp_tables()
        .flat_map(|table| {
            listener_rows(&table, port)
                .into_iter()
                .map(|(uid, inode)| format!("uid {uid}, socket inode {inode}"))
                .collect::<Vec<_>>()
        })
        .collect();
    (!owners.is_empty()).then(|| format!("a process /proc does not show ({})", owners.join("; ")))
}

/// The port's state at `host`; `None` when that address is not this machine's.
fn check_at(host: &str, port: u16) -> Option<PortState> {
    // The test listener closes at once: it must not be seen as a listener below.
    let bind_ok = match std::net::TcpListener::bind((host, port)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return None,
        Err(_) => false,
    };
    // After the bind, so a listener that appears between the two is still seen as one.
    Some(decide(listener_on(port), bind_ok))
}

/// The port's state at the node's host address; `None` when that address is not this
/// machine's.
fn check(node: &NodeSpec) -> Option<PortState> {
    check_at(node.host(), node.port)
}

/// True when `host` (an address, or a name that resolves to one) is an address of this machine:
/// a socket can be bound to it.
pub fn is_local_address(host: &str) -> bool {
    std::net::TcpListener::bind((host, 0)).is_ok()
}

/// True when nothing listens on `port` of 127.0.0.1 and it can be bound now (for ports pgrepl
/// picks itself).
pub fn is_free(port: u16) -> bool {
    check_at("127.0.0.1", port) == Some(PortState::Free)
}

/// A picker of free ports in `range` other than `avoid`, each once, starting at a place that
/// differs between processes (so two `up`s at once rarely try the same ones).
pub fn picker(range: std::ops::Range<u16>, avoid: &[u16]) -> impl FnMut() -> u16 + '_ {
    let (low, high) = (range.start, range.end);
    let span = u32::from(high - low);
    // Scattered: processes started one after another have neighbouring pids.
    let mut next = low + (std::process::id().wrapping_mul(2_654_435_761) % span) as u16;
    move || loop {
        next = if next + 1 >= high { low } else { next + 1 };
        if !avoid.contains(&next) && is_free(next) {
            return next;
        }
    }
}

/// Refuses a node whose host port something listens on, before anything is created; waits out
/// a client connection that holds the port for a moment.
pub async fn ensure_free(node: &NodeSpec) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + CLIENT_HOLD_WAIT;
    loop {
        let Some(state) = check(node) else {
            return Err(RuntimeError::NotThisMachine {
                node: node.name.clone(),
                host: node.host().to_owned(),
            });
        };
        match state {
            PortState::Free => return Ok(()),
            PortState::Listener => {
                let holder = holder(node.port).or_else(|| seen_holder(node.port));
                match holder {
                    Some(holder) => {
                        return Err(RuntimeError::PortInUse {
                            node: node.name.clone(),
                            port: node.port,
                            holder,
                        })
                    }
                    // Gone already: another program's probe of the port (a bind to see whether
                    // it is free), which lasts a moment. Seen once in the tests, holder unknown.
                    None if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(port = node.port, "a listener came and went: retrying");
                        tokio::time::sleep(RETRY_EVERY).await;
                    }
                    None => {
                        return Err(RuntimeError::PortInUse {
                            node: node.name.clone(),
                            port: node.port,
                            holder: "something".into(),
                        })
                    }
                }
            }
            PortState::HeldByClient if tokio::time::Instant::now() >= deadline => {
                return Err(RuntimeError::PortHeldByClient {
                    node: node.name.clone(),
                    port: node.port,
                })
            }
            PortState::HeldByClient => {
                tracing::debug!(port = node.port, "port held by a client socket: retrying");
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn row(local: &str, state: &str) -> String {
        format!("   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n")
    }

    fn loopback() -> String {
        format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]))
    }

    #[test]
    fn only_a_listener_on_loopback_or_the_wildcard_takes_the_port() {
        // 54322 = 0xD432.
        let listening = format!("{HEADER}{}", row(&format!("{}:D432", loopback()), "0A"));
        assert!(listens(&listening, 54322));
        assert!(!listens(&listening, 54321));
        let wildcard = format!("{HEADER}{}", row("00000000:D432", "0A"));
        assert!(listens(&wildcard, 54322));
        // An established client connection whose local end is 127.0.0.1:54322.
        let client = format!("{HEADER}{}", row(&format!("{}:D432", loopback()), "01"));
        assert!(!listens(&client, 54322));
        // A listener on another address does not collide with 127.0.0.1.
        let other = format!(
            "{HEADER}{}",
            row(
                &format!("{:08X}:D432", u32::from_ne_bytes([10, 0, 0, 5])),
                "0A"
            )
        );
        assert!(!listens(&other, 54322));
        let v6_any = format!(
            "{HEADER}{}",
            row("00000000000000000000000000000000:D432", "0A")
        );
        assert!(listens(&v6_any, 54322));
        assert!(!listens(HEADER, 54322));
    }

    #[test]
    fn a_failed_bind_without_listener_is_a_client_and_is_retried() {
        assert_eq!(decide(false, true), PortState::Free);
        assert_eq!(decide(true, false), PortState::Listener);
        assert_eq!(decide(true, true), PortState::Listener);
        assert_eq!(decide(false, false), PortState::HeldByClient);
    }

    #[tokio::test]
    async fn a_real_listener_is_refused_and_a_client_socket_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listener_on(port));
        let node = NodeSpec {
            name: "pg_x".into(),
            role: crate::cluster::spec::NodeRole::Primary,
            host: None,
            port,
            api: None,
        };
        let error = ensure_free(&node).await.unwrap_err();
        assert!(
            matches!(&error, RuntimeError::PortInUse { port: p, .. } if *p == port),
            "{error}"
        );
        // The listener is this test process's own: the error names it.
        let me = format!("pid {} (", std::process::id());
        assert!(error.to_string().contains(&me), "{error}");
        // A client connection: its local end is an ephemeral port with no listener.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert!(!listener_on(client_port));
        drop(listener);
    }

    #[test]
    fn local_addresses_are_told_from_other_machines() {
        assert!(is_local_address("127.0.0.1"));
        assert!(is_local_address("localhost"));
        // TEST-NET-1 and a name that resolves nowhere: never this machine's.
        assert!(!is_local_address("192.0.2.1"));
        assert!(!is_local_address("no-such-host.invalid"));
    }

    #[tokio::test]
    async fn a_host_that_is_no_address_of_this_machine_is_named() {
        let node = NodeSpec {
            name: "pg_x".into(),
            role: crate::cluster::spec::NodeRole::Primary,
            // TEST-NET-1: never an address of this machine.
            host: Some("192.0.2.1".into()),
            port: 5432,
            api: None,
        };
        let error = ensure_free(&node).await.unwrap_err();
        assert!(
            matches!(&error, RuntimeError::NotThisMachine { host, .. } if host == "192.0.2.1"),
            "{error}"
        );
    }
}
