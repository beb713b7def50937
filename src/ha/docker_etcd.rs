//! The etcd `up` starts on the docker runtime when `[ha]` names none: three containers,
//! `<scope>-etcd0..2`, from `[ha] etcd_image` on the cluster network. Members are picked and
//! recorded as `local_etcd`'s are (`<state_dir>/etcd/members.json`, with each one's client port
//! published on 127.0.0.1 for pgrepl on the host); they reach each other, and the agents reach
//! them, by container name. Their data is in `<state_dir>/etcd/<member>`.

use std::path::{Path, PathBuf};

use super::etcd_access::{EtcdAccess, User};
use super::local_etcd::{
    ensure_members, load_members, member_args, provisioned, secure, wait_answering, Member,
    MemberUrls,
};
use super::HaError;
use crate::cluster::docker::{
    DockerRuntime, EtcdContainer, ETCD_CLIENT_PORT, ETCD_DATA_MOUNT, ETCD_PEER_PORT, ETCD_TLS_MOUNT,
};
use crate::cluster::{ports, StepLog};

/// Where etcd answers: from the host (as the agents' user), and from the containers on the
/// cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrls {
    pub host: EtcdAccess,
    pub network: Vec<String>,
}

pub struct DockerEtcd<'a> {
    docker: &'a DockerRuntime,
    state_dir: PathBuf,
    scope: String,
    image: String,
}

impl<'a> DockerEtcd<'a> {
    pub fn new(docker: &'a DockerRuntime, state_dir: &Path, scope: &str, image: &str) -> Self {
        DockerEtcd {
            docker,
            state_dir: state_dir.to_owned(),
            scope: scope.to_owned(),
            image: image.to_owned(),
        }
    }

    fn container_name(&self, member: &Member) -> String {
        format!("{}-{}", self.scope, member.name)
    }

    fn network_url(&self, member: &Member, port: u16) -> String {
        format!(
            "{}://{}:{port}",
            member.scheme(),
            self.container_name(member)
        )
    }

    /// What a member's certificate names: its container on the network, its port on the host.
    fn names(&self, member: &Member) -> Vec<String> {
        vec![
            self.container_name(member),
            "127.0.0.1".into(),
            "localhost".into(),
        ]
    }

    /// The container of `member` in a cluster of `members`; `tls`: the members' certificates.
    fn definition(
        &self,
        member: &Member,
        members: &[Member],
        token: &str,
        tls: Option<&Path>,
    ) -> EtcdContainer {
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, self.network_url(m, ETCD_PEER_PORT)))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = member.scheme();
        let urls = MemberUrls {
            listen_client: format!("{scheme}://0.0.0.0:{ETCD_CLIENT_PORT}"),
            advertise_client: self.network_url(member, ETCD_CLIENT_PORT),
            listen_peer: format!("{scheme}://0.0.0.0:{ETCD_PEER_PORT}"),
            advertise_peer: self.network_url(member, ETCD_PEER_PORT),
        };
        let args = member_args(
            &member.name,
            &urls,
            ETCD_DATA_MOUNT.as_ref(),
            &initial_cluster,
            token,
            tls.map(|_| Path::new(ETCD_TLS_MOUNT)),
        );
        EtcdContainer {
            name: self.container_name(member),
            image: self.image.clone(),
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            data: self.state_dir.join("etcd").join(&member.name),
            host_port: member.client_port,
            tls: tls.map(Path::to_path_buf),
        }
    }

    /// Starts the members' containers that do not run (creating them the first time, with
    /// client ports other than `avoid`, with TLS and auth when `tls`) and returns the URLs once
    /// every member answers a linearizable read.
    pub async fn ensure_running(
        &self,
        avoid: &[u16],
        tls: bool,
        log: &dyn StepLog,
    ) -> Result<EtcdUrls, HaError> {
        // A missing image fails before anything is made.
        self.docker.ensure_part_image(&self.image, "etcd").await?;
        let members = ensure_members(&self.state_dir, avoid, tls)?;
        // An etcd made before TLS keeps speaking plain HTTP.
        let tls = members.iter().all(|m| m.tls);
        let tls_dir = secure(
            &self.state_dir,
            &self.scope,
            &members,
            |m| self.names(m),
            log,
        )?;
        let token = format!("pgrepl-{}", self.scope);
        for member in &members {
            let container = self.definition(member, &members, &token, tls_dir.as_deref());
            if !self.docker.container_runs(&container.name).await
                && !ports::is_free(member.client_port)
            {
                return Err(HaError::EtcdContainerPortInUse {
                    port: member.client_port,
                    container: container.name.clone(),
                });
            }
            if self.docker.ensure_etcd(&container).await? {
                log.step(&format!(
                    "start etcd container `{}` (client {} on the host, data in `{}`)",
                    container.name,
                    member.client_url(),
                    container.data.display()
                ));
            }
        }
        let host: Vec<String> = members.iter().map(Member::client_url).collect();
        let root = EtcdAccess::own(&self.state_dir, host.clone(), tls, User::Root);
        wait_answering(&root, |i| {
            format!("docker logs {}", self.container_name(&members[i]))
        })
        .await?;
        provisioned(&self.state_dir, &root, &self.scope, log).await?;
        let host = EtcdAccess::own(&self.state_dir, host, tls, User::Agent);
        let network = members
            .iter()
            .map(|m| self.network_url(m, ETCD_CLIENT_PORT))
            .collect();
        Ok(EtcdUrls { host, network })
    }

    /// Removes the members' containers (their data stays until `down --purge`).
    pub async fn remove(&self) -> Result<(), HaError> {
        let Some(members) = load_members(&self.state_dir.join("etcd"))? else {
            return Ok(());
        };
        for member in &members {
            self.docker
                .remove_and_confirm(&self.container_name(member))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::DockerSettings;

    #[test]
    fn members_reach_each_other_by_container_name_and_listen_on_every_address() {
        let tmp = tempfile::tempdir().unwrap();
        let docker =
            DockerRuntime::new(tmp.path().to_owned(), DockerSettings::default(), None).unwrap();
        let etcd = DockerEtcd::new(&docker, tmp.path(), "demo", "pgrepl-local/etcd:3.4");
        let members = ensure_members(tmp.path(), &[], false).unwrap();
        let container = etcd.definition(&members[1], &members, "pgrepl-demo", None);
        assert_eq!(container.name, "demo-etcd1");
        assert_eq!(container.host_port, members[1].client_port);
        assert_eq!(container.data, tmp.path().join("etcd/etcd1"));
        let args = container.args.join(" ");
        for expected in [
            "--name etcd1",
            "--listen-client-urls http://0.0.0.0:2379",
            "--advertise-client-urls http://demo-etcd1:2379",
            "--initial-advertise-peer-urls http://demo-etcd1:2380",
            "--initial-cluster etcd0=http://demo-etcd0:2380,etcd1=http://demo-etcd1:2380,etcd2=http://demo-etcd2:2380",
            "--initial-cluster-token pgrepl-demo",
            "--data-dir /var/lib/etcd",
        ] {
            assert!(args.contains(expected), "{expected} in {args}");
        }
        // The host's commands find the published ports.
        let endpoints =
            std::fs::read_to_string(crate::ha::local_etcd_endpoints_file(tmp.path())).unwrap();
        assert_eq!(
            endpoints.lines().next(),
            Some(members[0].client_url().as_str())
        );
    }
}
