//! How an id is written in a path (`/students/7`): the rule grading reads ids by, and the one
//! the portal checks before it asks grading, so that both read a segment the same way.

use std::fmt;
use std::str::FromStr;

/// An id as written in a path: plain ASCII digits without a leading zero, from 1 to
/// `i64::MAX` (ids are SQLite rowids), so `+7`, ` 7`, `07` and `7.0` are not ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u64);

/// A path segment that is not an [`Id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnId;

impl fmt::Display for NotAnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not an id: ids are whole numbers from 1 to {}, written in plain digits",
            i64::MAX
        )
    }
}

impl std::error::Error for NotAnId {}

impl FromStr for Id {
    type Err = NotAnId;

    fn from_str(text: &str) -> Result<Id, NotAnId> {
        // `u64::from_str` alone would take a leading `+`, and `i64` a `-`.
        if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotAnId);
        }
        text.parse::<i64>()
            .map(|id| Id(id as u64))
            .map_err(|_| NotAnId)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_plain_digits_from_1_to_i64_max() {
        assert_eq!("7".parse(), Ok(Id(7)));
        assert_eq!(i64::MAX.to_string().parse(), Ok(Id(i64::MAX as u64)));
        for text in [
            "",
            "0",
            "07",
            "+7",
            "-7",
            " 7",
            "7 ",
            "7.0",
            "0x7",
            "abc",
            "٣",
            "9223372036854775808",
            "99999999999999999999999",
        ] {
            assert_eq!(text.parse::<Id>(), Err(NotAnId), "{text:?}");
        }
    }
}
