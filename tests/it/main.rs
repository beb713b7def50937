// Tests drive stock tools (psql, pg_basebackup, docker images) to check pgrepl against them.
// One module per spec (what pgrepl promises about one thing); what they share is in `support`.
#![allow(clippy::disallowed_methods)]

mod basebackup;
mod bench;
mod cluster_docker;
mod cluster_flow;
mod cluster_local;
mod cluster_tls;
mod etcd;
mod fake_server;
mod faults;
mod fetch;
mod ha;
mod ha_api;
mod ha_clients;
mod ha_control;
mod ha_docker;
mod ha_docker_etcd;
mod ha_etcd_auth;
mod ha_faults;
mod ha_hosts;
mod ha_soak;
mod ha_up;
mod lag;
mod lag_serve;
mod no_arguments;
mod receivewal;
mod resync;
mod secrets;
mod settings;
mod support;
mod tls;

use support::harness::{PgInstall, PgServer, ServerOptions};

#[test]
fn harness_starts_a_server() {
    let server = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one: i32 = rt.block_on(async {
        let client = server.client().await;
        client.query_one("SELECT 1", &[]).await.unwrap().get(0)
    });
    assert_eq!(one, 1, "{}", server.log_tail());
    assert_eq!(server.psql("SELECT 1"), "1");
}
