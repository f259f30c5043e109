//! What every service answers to a browser, whatever the route: only requests addressed to one of
//! its own host names are served (a DNS-rebinding page reaches us under its own name), and every
//! answer carries headers that forbid framing, sniffing, inline script and leaking the address.
//!
//! The check and the headers are applied to every request by `crate::front`.
//!
//! Every service gets this, not just the portal: grading and log listen on addresses a browser
//! on a hostile page can reach just as well once that page's name resolves to them.

use std::sync::Arc;

use warp::http::HeaderMap;
use warp::http::header::{self, HeaderValue};

/// The flag (and environment variable) naming the host names a service answers to besides the
/// loopback ones and its advertised address. Flattened into each service's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AllowedHostsArgs {
    /// Host name (or address) browsers may use to reach this service, besides localhost names
    /// and the advertised host; repeat the flag or separate with commas. `*` allows any host
    /// (only behind a proxy that checks Host itself).
    #[arg(
        long = "allowed-host",
        env = "GRADEBOOK_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub allowed_hosts: Vec<String>,
}

/// The host names a service answers to. Ports are not compared: a rebinding page can use any
/// port, and the name is what it cannot choose.
#[derive(Debug, Clone)]
pub struct HostAllowList {
    names: Arc<[String]>,
    any: bool,
    /// The advertised `host:port`, allowed as it is and compared first: what Consul's check and
    /// every caller found through Consul send.
    exact: Option<Arc<str>>,
}

impl HostAllowList {
    /// Loopback names (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`), `advertised_host` (what
    /// Consul's health check and other services put in `Host`) and the `extra` names given.
    pub fn new(advertised_host: &str, extra: &[String]) -> HostAllowList {
        let any = extra.iter().any(|name| name.trim() == "*");
        let names = std::iter::once(advertised_host)
            .chain(extra.iter().map(String::as_str))
            .map(normalize)
            .filter(|name| !name.is_empty() && name != "*")
            .collect();
        HostAllowList {
            names,
            any,
            exact: None,
        }
    }

    /// As [`HostAllowList::new`], with the `Host` value the service is reached by most often
    /// (`host:port` as advertised) checked first, as a whole string.
    pub fn advertised(
        advertised_host: &str,
        advertised_port: u16,
        extra: &[String],
    ) -> HostAllowList {
        let exact = match advertised_host.contains(':') {
            true => format!("[{advertised_host}]:{advertised_port}"),
            false => format!("{advertised_host}:{advertised_port}"),
        };
        HostAllowList {
            exact: Some(exact.into()),
            ..HostAllowList::new(advertised_host, extra)
        }
    }

    /// Whether a `Host` header (`name`, `name:port`, `[v6]:port`) names this service. Runs on
    /// every request, so it compares in place, without allocating.
    pub fn allows(&self, host: &str) -> bool {
        if self.exact.as_deref() == Some(host) {
            return true;
        }
        let name = trim(strip_port(host));
        if name.is_empty() {
            return false;
        }
        // Our own names first: they are what callers use, and the loopback check parses an IP
        // address.
        self.any
            || self
                .names
                .iter()
                .any(|ours| ours.eq_ignore_ascii_case(name))
            || is_loopback_name(name)
    }
}

/// Without brackets around an IPv6 address or a final dot.
fn trim(name: &str) -> &str {
    let name = name.trim().trim_start_matches('[').trim_end_matches(']');
    name.strip_suffix('.').unwrap_or(name)
}

/// Lowercase, without brackets around an IPv6 address or a final dot.
fn normalize(name: &str) -> String {
    trim(name).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:80` or `[::1]`
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        // One colon: `name:port`. More: a bare IPv6 address, which a Host header never is.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        Some(_) => "",
        None => host,
    }
}

/// Names that only ever reach this machine, which a foreign page cannot be served under; in any
/// case.
fn is_loopback_name(name: &str) -> bool {
    const SUFFIX: &[u8] = b".localhost";
    let bytes = name.as_bytes();
    name.eq_ignore_ascii_case("localhost")
        || bytes.len() >= SUFFIX.len()
            && bytes[bytes.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX)
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What every answer tells the browser: no script, style or image from anywhere but here and no
/// inline script (CSP), no framing by another site, no guessing a type other than the one sent,
/// no address of ours in the `Referer` of a link followed elsewhere.
pub fn add_security_headers(headers: &mut HeaderMap) {
    const POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                          form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    // The values are checked at compile time (`const`), not on every answer; the room for all
    // of them is made at once.
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            const { HeaderValue::from_static(POLICY) },
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            const { HeaderValue::from_static("nosniff") },
        ),
        // frame-ancestors for browsers that predate it.
        (
            header::X_FRAME_OPTIONS,
            const { HeaderValue::from_static("DENY") },
        ),
        // Not `no-referrer`: under it browsers send `Origin: null` with our own forms, which the
        // portal's CSRF check must then refuse.
        (
            header::REFERRER_POLICY,
            const { HeaderValue::from_static("same-origin") },
        ),
    ];
    // One more for the `traceparent` the server adds after these (see crate::front).
    headers.reserve(set.len() + 1);
    for (name, value) in set {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_the_advertised_host_and_the_listed_ones_are_allowed() {
        let list = HostAllowList::new("10.0.0.7", &["Gradebook.Example".to_owned()]);
        for host in [
            "localhost",
            "localhost:5000",
            "app.localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
            "10.0.0.7:6100",
            "gradebook.example",
            "GRADEBOOK.example.:443",
        ] {
            assert!(list.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:5000",
            "localhost.evil.example",
            "10.0.0.8:6100",
            "",
            ":5000",
            "[::2]:5000",
            "10.0.0.7:x",
        ] {
            assert!(!list.allows(host), "{host}");
        }
        assert!(HostAllowList::new("h", &["*".to_owned()]).allows("evil.example"));
    }

    #[test]
    fn the_advertised_address_is_allowed_with_any_port_and_nothing_else_is_added() {
        let v4 = HostAllowList::advertised("10.0.0.7", 6100, &[]);
        let v6 = HostAllowList::advertised("fd00::7", 6100, &[]);
        for (list, host) in [
            (&v4, "10.0.0.7:6100"),
            (&v4, "10.0.0.7:1"),
            (&v4, "localhost:6100"),
            (&v6, "[fd00::7]:6100"),
            (&v6, "[FD00::7]:80"),
        ] {
            assert!(list.allows(host), "{host}");
        }
        for host in ["10.0.0.8:6100", "evil.example:6100", "6100", ""] {
            assert!(!v4.allows(host), "{host}");
        }
    }
}
