//! How pgrepl reaches etcd and proves who it is, and who may do what there.
//!
//! An etcd of one's own (`[ha] etcd`) is reached with what `[ha]` gives: its CA, a client
//! certificate, a user and password file. The etcd `up` starts (`local_etcd`, `docker_etcd`)
//! is secured by `up` itself when the cluster has TLS: members speak TLS to clients and to each
//! other and require a certificate the cluster CA signed, auth is on, and etcd takes a client
//! certificate's common name as its user (`<state_dir>/tls/etcd/clients/`):
//!
//! - `root`: only `up`, to create the users and roles;
//! - `pgrepl-<scope>`: the agents and the commands that change state, read-write on
//!   `/pgrepl/<scope>/` and nothing else;
//! - `pgrepl-<scope>-read`: `status`, `lag` and `history`, read-only on the same prefix.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions, UserAddOptions};

use super::records::Keys;
use super::HaError;
use crate::cluster::tls::{ca_cert_path, ca_dir, Leaf, Usage};

/// What a command does in etcd: changes state (agents, pause, switchover) or only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Reader,
}

/// The identities of the etcd `up` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    Root,
    Agent,
    Reader,
}

impl User {
    /// etcd's user name: the certificate's common name.
    pub fn name(self, scope: &str) -> String {
        match self {
            User::Root => "root".into(),
            User::Agent => format!("pgrepl-{scope}"),
            User::Reader => format!("pgrepl-{scope}-read"),
        }
    }

    fn stem(self) -> &'static str {
        match self {
            User::Root => "root",
            User::Agent => "agent",
            User::Reader => "reader",
        }
    }
}

impl From<Role> for User {
    fn from(role: Role) -> User {
        match role {
            Role::Agent => User::Agent,
            Role::Reader => User::Reader,
        }
    }
}

/// A client's TLS: the CA that signed etcd's certificates, and its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Where etcd is and how to prove who one is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    pub tls: Option<ClientTls>,
    /// A user name and the file holding its password.
    pub user: Option<(String, PathBuf)>,
}

impl EtcdAccess {
    /// Plain URLs, no credentials.
    pub fn plain(endpoints: Vec<String>) -> EtcdAccess {
        EtcdAccess {
            endpoints,
            tls: None,
            user: None,
        }
    }

    /// The same credentials, other URLs (`--etcd`).
    pub fn at(&self, endpoints: Vec<String>) -> EtcdAccess {
        EtcdAccess {
            endpoints,
            ..self.clone()
        }
    }

    /// The client options the credentials make, read from their files now (a rotated
    /// certificate is used by the next connection).
    pub fn options(&self) -> Result<ConnectOptions, HaError> {
        let https = self.endpoints.iter().any(|u| u.starts_with("https://"));
        match (https, &self.tls) {
            (true, None) => {
                return Err(HaError::EtcdNeedsCa {
                    endpoints: self.endpoints.clone(),
                })
            }
            (false, Some(_)) if !self.endpoints.is_empty() => {
                return Err(HaError::EtcdNotTls {
                    endpoints: self.endpoints.clone(),
                })
            }
            _ => {}
        }
        let mut options = ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(config);
        }
        if let Some((name, file)) = &self.user {
            let password = read(file)?;
            let password = String::from_utf8_lossy(&password).trim_end().to_owned();
            options = options.with_user(name.clone(), password);
        }
        Ok(options)
    }

    /// The etcd `up` started in `state_dir`, as `user`.
    pub fn own(state_dir: &Path, endpoints: Vec<String>, tls: bool, user: User) -> EtcdAccess {
        let tls = tls.then(|| {
            let leaf = client_leaf(state_dir, "", user);
            ClientTls {
                ca: ca_cert_path(state_dir),
                identity: Some((leaf.cert(), leaf.key())),
            }
        });
        EtcdAccess {
            endpoints,
            tls,
            user: None,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, HaError> {
    std::fs::read(path).map_err(|source| HaError::Io {
        context: format!("read `{}` (etcd credentials)", path.display()),
        source,
    })
}

/// The member certificates' directory: what an etcd container mounts (no client key in it).
pub fn members_dir(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("etcd").join("members")
}

fn clients_dir(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("etcd").join("clients")
}

/// An etcd member's certificate: server to its clients, client to its peers.
pub fn member_leaf(state_dir: &Path, member: &str, names: Vec<String>) -> Leaf {
    Leaf {
        name: member.to_owned(),
        dir: members_dir(state_dir),
        stem: member.to_owned(),
        names,
        usage: Usage::ServerAndClient,
    }
}

/// A client identity's certificate (the scope names the user; the files do not depend on it).
pub fn client_leaf(state_dir: &Path, scope: &str, user: User) -> Leaf {
    Leaf {
        name: user.name(scope),
        dir: clients_dir(state_dir),
        stem: user.stem().into(),
        names: Vec::new(),
        usage: Usage::Client,
    }
}

/// The certificates of the etcd `up` starts: each member's and the three users'.
pub fn leaves(state_dir: &Path, scope: &str, members: &[(String, Vec<String>)]) -> Vec<Leaf> {
    members
        .iter()
        .map(|(name, names)| member_leaf(state_dir, name, names.clone()))
        .chain(
            [User::Root, User::Agent, User::Reader]
                .into_iter()
                .map(|user| client_leaf(state_dir, scope, user)),
        )
        .collect()
}

/// Creates the users and roles of `scope` and turns auth on, through `root` (the root
/// certificate); what exists already is left as it is, so an interrupted run is finished by
/// the next.
pub async fn provision(root: &EtcdAccess, scope: &str) -> Result<(), HaError> {
    let failed = |what: String| {
        move |source: etcd_client::Error| HaError::Etcd {
            endpoints: format!("{} ({what})", root.endpoints.join(",")),
            source: Box::new(source),
        }
    };
    let mut client = etcd_client::Client::connect(&root.endpoints, Some(root.options()?))
        .await
        .map_err(failed("connect as root".into()))?;
    let prefix = Keys::new(scope).prefix().to_owned();
    // Each user has a role of its own name.
    let grants = [
        (User::Root.name(scope), None),
        (
            User::Agent.name(scope),
            Some(Permission::read_write(prefix.clone()).with_prefix()),
        ),
        (
            User::Reader.name(scope),
            Some(Permission::read(prefix).with_prefix()),
        ),
    ];
    for (name, permission) in grants {
        let name = name.as_str();
        // Certificates are the only way in: no user has a password.
        let added = client
            .user_add(name, "", Some(UserAddOptions::new().with_no_pwd()))
            .await;
        match added {
            Err(e) if !already_exists(&e) => return Err(failed(format!("add user {name}"))(e)),
            _ => {}
        }
        match client.role_add(name).await {
            Err(e) if !already_exists(&e) => return Err(failed(format!("add role {name}"))(e)),
            _ => {}
        }
        if let Some(permission) = permission {
            client
                .role_grant_permission(name, permission)
                .await
                .map_err(failed(format!("grant role {name} its prefix")))?;
        }
        client
            .user_grant_role(name, name)
            .await
            .map_err(failed(format!("grant user {name} its role")))?;
    }
    client
        .auth_enable()
        .await
        .map_err(failed("enable auth".into()))?;
    Ok(())
}

/// A user or role that exists already is what a second run wants.
fn already_exists(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("already exists"))
}
