//! The `Idempotency-Key` of a change: a client names one logical request with it, so that
//! sending the request again (after a lost answer, to any instance) applies it once. Grading
//! stores the key with the change; the portal hands one out with each form.

/// The header that carries the key (header names are case-insensitive).
pub const HEADER: &str = "idempotency-key";

/// Longest key, in characters (all ASCII, so also in bytes).
pub const MAX_CHARS: usize = 100;

/// Whether `key` is one grading takes: 1 to [`MAX_CHARS`] letters, digits, `-`, `_`, `.` or
/// `:` (UUIDs and random hex fit).
pub fn is_valid(key: &str) -> bool {
    (1..=MAX_CHARS).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_1_to_100_safe_characters() {
        for good in ["k-1", "0f3a", "urn:uuid:1.2_3", &"a".repeat(100)] {
            assert!(is_valid(good), "{good}");
        }
        for bad in ["", "not a key!", "é", "a/b", &"a".repeat(101)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
