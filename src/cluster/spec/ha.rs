//! `[ha]`: etcd (its URLs and credentials, or none: `up` starts its own), the scope, the lease.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[ha]`: automatic failover by one `pgrepl agent` per node, with etcd as the consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSpec {
    /// etcd client URLs. Empty: `up` starts a 3-member etcd of its own in the state dir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// The cluster's name in etcd keys, `/pgrepl/<scope>/` (default: the cluster file's name
    /// without its extension, `pgrepl` for the built-in defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Leader lease time to live in seconds: a dead primary is replaced about this long after
    /// its last renewal.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    /// Seconds a leader's server may fail to start (or stay in crash recovery) before a
    /// standby takes over, when one can without loss (Patroni's `primary_start_timeout`).
    #[serde(
        default = "default_start_timeout",
        skip_serializing_if = "is_default_start_timeout"
    )]
    pub primary_start_timeout: u64,
    /// The image of the etcd containers `up` starts on the docker runtime when `etcd` names
    /// none (`compose/build-image etcd` builds the default from the machine's etcd).
    #[serde(
        default = "default_etcd_image",
        skip_serializing_if = "is_default_etcd_image"
    )]
    pub etcd_image: String,
    /// For an etcd of your own (`etcd` with `https://` URLs): the CA that signed its server
    /// certificates. The etcd `up` starts uses the cluster CA and needs none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate the agents and commands present (etcd's `--client-cert-auth`;
    /// with auth on, its common name is the etcd user), with `etcd_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user with a password, the password read from `etcd_password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_password_file: Option<PathBuf>,
}

const DEFAULT_ETCD_IMAGE: &str = "pgrepl-local/etcd:3.4";

fn default_etcd_image() -> String {
    DEFAULT_ETCD_IMAGE.into()
}

fn is_default_etcd_image(image: &str) -> bool {
    image == DEFAULT_ETCD_IMAGE
}

/// The agents' lease time to live, whole seconds: 2 s is etcd's minimum with its default
/// election timeout. Here, below `ha`, so that the cluster file's defaults need nothing above.
pub const DEFAULT_TTL_S: u64 = 2;

/// How long a leader's server may fail to run as a primary before a standby may take over: long
/// enough for a crash recovery after a busy checkpoint interval on this machine (recovery is ~1 s
/// here with the agent's syncfs setting); a failover that rewinds the old primary costs more than
/// waiting that long, and less than waiting longer.
pub const DEFAULT_START_TIMEOUT_S: u64 = 30;

fn default_ttl() -> u64 {
    DEFAULT_TTL_S
}

fn default_start_timeout() -> u64 {
    DEFAULT_START_TIMEOUT_S
}

fn is_default_start_timeout(seconds: &u64) -> bool {
    *seconds == default_start_timeout()
}

impl Default for HaSpec {
    fn default() -> Self {
        HaSpec {
            etcd: Vec::new(),
            scope: None,
            ttl: default_ttl(),
            primary_start_timeout: default_start_timeout(),
            etcd_image: default_etcd_image(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
        }
    }
}

impl HaSpec {
    /// The etcd credentials' files, for paths relative to the cluster file.
    pub fn etcd_files_mut(&mut self) -> [&mut Option<PathBuf>; 4] {
        [
            &mut self.etcd_ca,
            &mut self.etcd_cert,
            &mut self.etcd_key,
            &mut self.etcd_password_file,
        ]
    }

    /// Credentials only make sense for an etcd of one's own, and come in pairs.
    pub(super) fn validate_etcd(&self) -> Result<(), String> {
        let credentials = self.etcd_ca.is_some()
            || self.etcd_cert.is_some()
            || self.etcd_user.is_some()
            || self.etcd_key.is_some()
            || self.etcd_password_file.is_some();
        if self.etcd.is_empty() {
            if credentials {
                return Err("[ha] etcd_ca, etcd_cert, etcd_key, etcd_user and etcd_password_file are for an etcd of your own, named in [ha] etcd: the etcd `up` starts has its own".into());
            }
            return Ok(());
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err("[ha] etcd_cert and etcd_key go together: give both, or neither".into());
        }
        if self.etcd_user.is_some() != self.etcd_password_file.is_some() {
            return Err("[ha] etcd_user needs etcd_password_file (a file holding the password), and the file a user".into());
        }
        let https = self
            .etcd
            .iter()
            .filter(|u| u.starts_with("https://"))
            .count();
        if https != 0 && https != self.etcd.len() {
            return Err("[ha] etcd mixes http:// and https:// URLs: one etcd speaks one".into());
        }
        match (https > 0, self.etcd_ca.is_some()) {
            (true, false) => Err(
                "[ha] etcd is https://: give etcd_ca, the CA that signed its certificates".into(),
            ),
            (false, true) => {
                Err("[ha] etcd_ca is given but etcd is http://: write the URLs as https://".into())
            }
            _ if self.etcd_cert.is_some() && https == 0 => Err(
                "[ha] etcd_cert is given but etcd is http://: write the URLs as https://".into(),
            ),
            _ => Ok(()),
        }
    }
}
