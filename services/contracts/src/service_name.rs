//! Service names: the Consul names the gradebook's services register and find each other by,
//! and the rule for any service name a log record carries (also a filter in `GET /log`).

/// Consul name of the log service.
pub const LOG: &str = "log";
/// Consul name of the grading service.
pub const GRADING: &str = "grading";
/// Consul name of the portal.
pub const PORTAL: &str = "portal";

/// Longest service name, in characters (all ASCII, so also in bytes).
pub const MAX_CHARS: usize = 100;

/// Whether `c` may appear in a service name: names end up in URLs, file names and log lines,
/// so they keep to `[A-Za-z0-9._-]`, which needs no escaping in any of them.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether `name` is a service name: 1 to [`MAX_CHARS`] characters of `[A-Za-z0-9._-]`.
pub fn is_valid(name: &str) -> bool {
    (1..=MAX_CHARS).contains(&name.len()) && name.chars().all(is_name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_plain_names() {
        for good in [LOG, GRADING, PORTAL, "my-service_1.2", &"x".repeat(100)] {
            assert!(is_valid(good), "{good}");
        }
        for bad in ["", "a&limit=1", "a b", "é", &"x".repeat(101)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
