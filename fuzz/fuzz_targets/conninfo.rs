//! Conninfo strings and `postgresql://` URIs: `ConnParams::parse`, then what pgrepl does with a
//! parsed string: resolve it (no environment), render `redacted()` and `primary_conninfo()`.
//!
//! Checked beyond "no panic": the rendered `primary_conninfo` parses back to the same settings
//! (a standby must get what pgrepl used), and `redacted()` parses back without a password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgrepl::conn::{ConnParams, ConnectOptions};

fn resolve(text: &str) -> Option<ConnectOptions> {
    let params = ConnParams::parse(text).ok()?;
    ConnectOptions::resolve(params, &|_| None).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = format!("{:?}", ConnParams::parse(text));
    let Some(options) = resolve(text) else {
        return;
    };
    let rendered = options.primary_conninfo(options.application_name.as_deref(), true);
    let again = resolve(&rendered).unwrap_or_else(|| panic!("`{rendered}` does not parse back"));
    assert_eq!(again.host, options.host, "{rendered}");
    assert_eq!(again.port, options.port);
    assert_eq!(again.user, options.user);
    assert_eq!(again.password, options.password);
    assert_eq!(again.passfile, options.passfile);
    assert_eq!(again.sslmode, options.sslmode);
    assert_eq!(again.sslrootcert, options.sslrootcert);
    assert_eq!(again.channel_binding, options.channel_binding);
    assert_eq!(again.application_name, options.application_name);

    let redacted = options.redacted();
    let shown = resolve(&redacted).unwrap_or_else(|| panic!("`{redacted}` does not parse back"));
    assert!(shown.password.is_none(), "{redacted}");
});
