//! The cluster file: `toml::from_str::<ClusterSpec>` and `validate`, as `ClusterSpec::load` does.
//! A valid spec must render (`to_toml`), parse back to itself, and answer its accessors; its
//! sync policy must render as synchronous_standby_names that parse back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgrepl::cluster::spec::ClusterSpec;
use pgrepl::sync_policy::SyncPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = toml::from_str::<ClusterSpec>(text) else {
        return;
    };
    if spec.validate().is_err() {
        return;
    }
    let _ = spec.primary();
    let _ = spec.standbys().count();
    // The policy renders as text the parser reads back as the same policy.
    let names = spec.sync.policy.to_string();
    let parsed: SyncPolicy = names
        .parse()
        .unwrap_or_else(|e| panic!("rendered policy does not parse: {e}"));
    assert_eq!(parsed, spec.sync.policy, "{names}");
    let rendered = spec.to_toml();
    let again: ClusterSpec = toml::from_str(&rendered)
        .unwrap_or_else(|e| panic!("rendered spec does not parse: {e}\n{rendered}"));
    assert_eq!(again, spec, "{rendered}");
    again.validate().expect("a valid spec stays valid");
});
