//! The grading domain. Values that cross the edge validate themselves ([`Name::parse`],
//! [`Title::parse`], [`Score::parse`], [`parse_grade_type`], [`StudentId::parse`]), so an
//! invalid one cannot exist past it and neither handlers nor storage check again. What they
//! look like on the wire is the [`contracts`] crate's, shared with the portal; the conversions
//! to it are at the end of this file.

use std::fmt;

use contracts::grading as wire;

pub use contracts::grading::GradeType;

/// Longest first or last name, in characters (not bytes).
pub const MAX_NAME_CHARS: usize = 100;
/// Longest grade title, in characters (not bytes).
pub const MAX_TITLE_CHARS: usize = 200;
/// How much of a rejected value an error repeats back, so a huge bad value cannot make a huge error.
const MAX_ECHO_CHARS: usize = 40;

/// A value a client sent that breaks a rule; displays as `field: problem`, the field named as in
/// the JSON the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// The JSON field, e.g. `score`.
    pub field: &'static str,
    /// What is wrong with it, e.g. `must be between 0 and 100`.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        problem: problem.into(),
    }
}

/// An id in a path that no resource can have (not a whole number from 1 to 2^63-1), so the
/// answer is the same "not found" a valid but unknown id gets, with a hint why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no {kind} with id {text:?}: ids are whole numbers from 1 to {}",
    i64::MAX
)]
pub struct InvalidId {
    /// `student` or `grade`.
    pub kind: &'static str,
    /// The segment as sent, shortened if long.
    pub text: String,
}

/// Ids are SQLite rowids, read as the portal reads them too ([`contracts::id::Id`]): plain
/// digits without a leading zero, so `+7`, ` 7` or `07` are not ids.
fn parse_id(kind: &'static str, text: &str) -> Result<i64, InvalidId> {
    text.parse::<contracts::id::Id>()
        .map(|contracts::id::Id(id)| id as i64)
        .map_err(|_| InvalidId {
            kind,
            text: echo(text),
        })
}

/// Defines an id type: a positive i64 (an SQLite rowid) that parses itself from a path segment.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub(crate) i64);

        impl $name {
            /// Parses an id from a path segment.
            pub fn parse(text: &str) -> Result<$name, InvalidId> {
                parse_id($kind, text).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Identifies a student; assigned on creation and never reused.
    StudentId,
    "student"
);
id_type!(
    /// Identifies a grade; unique across all students, never reused.
    GradeId,
    "grade"
);

/// Trims, then requires 1 to `max_chars` characters, no control characters (these are one-line
/// labels, and a newline or escape sequence in one is a mistake or an attack on a terminal), no
/// bidirectional controls, and at least one visible character.
fn parse_label(field: &'static str, text: &str, max_chars: usize) -> Result<String, InvalidField> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must not contain control characters such as newlines or tabs",
        ));
    }
    if text.chars().any(is_bidi_control) {
        return Err(invalid(
            field,
            "must not contain bidirectional controls (U+200E, U+200F, U+202A to U+202E, U+2066 \
             to U+2069, U+061C): they reorder the text around them on every page",
        ));
    }
    if !text.chars().any(is_visible) {
        return Err(invalid(
            field,
            "must contain at least one visible character (not only spaces, zero-width or other \
             invisible characters)",
        ));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(invalid(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    Ok(text.to_owned())
}

/// The characters that change the direction of the text after them: the embeddings and
/// overrides (U+202A to U+202E), the isolates (U+2066 to U+2069) and the marks (U+200E LRM,
/// U+200F RLM, U+061C ALM). A name ending in U+202E reverses the rest of its line on the page.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Neither white space nor one of Unicode's default-ignorable code points (DerivedCoreProperties
/// `Default_Ignorable_Code_Point`: zero-width spaces and joiners, soft hyphen, variation
/// selectors, Hangul fillers, tags and the rest), which render as nothing. A label made only of
/// those looks empty on the page; they are allowed beside visible characters (a zero-width
/// joiner is part of many scripts and emoji).
fn is_visible(c: char) -> bool {
    let default_ignorable = matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    );
    !c.is_whitespace() && !default_ignorable
}

/// A first or last name: 1 to [`MAX_NAME_CHARS`] characters after trimming. HTML is kept as
/// sent: this is JSON, and escaping is the job of whoever renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub(crate) String);

impl Name {
    /// Validates `text` as the JSON field `field` (`firstName` or `lastName`).
    pub fn parse(field: &'static str, text: &str) -> Result<Name, InvalidField> {
        parse_label(field, text, MAX_NAME_CHARS).map(Name)
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a grade was for, e.g. "Quiz 3": 1 to [`MAX_TITLE_CHARS`] characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(pub(crate) String);

impl Title {
    /// Validates the JSON field `title`.
    pub fn parse(text: &str) -> Result<Title, InvalidField> {
        parse_label("title", text, MAX_TITLE_CHARS).map(Title)
    }

    /// The title as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A score in percent: a finite number from 0 to 100 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Score(pub(crate) f64);

impl Score {
    /// Validates the JSON field `score`.
    pub fn parse(value: f64) -> Result<Score, InvalidField> {
        if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
            return Err(invalid("score", "must be between 0 and 100"));
        }
        // Adding +0.0 turns -0.0 into 0.0, so "-0" is not echoed back as a negative score.
        Ok(Score(value + 0.0))
    }

    /// The score in percent.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Reads the JSON field `type`: a grade type's name in any case (`quiz` is clearly `Quiz`),
/// around spaces; the error lists the allowed names.
pub fn parse_grade_type(text: &str) -> Result<GradeType, InvalidField> {
    GradeType::ALL
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            invalid(
                "type",
                format!(
                    "{:?} is not a grade type: use Test, Quiz or Homework",
                    echo(text)
                ),
            )
        })
}

/// Longest `Idempotency-Key`, in characters.
pub const MAX_REQUEST_KEY_CHARS: usize = contracts::request_key::MAX_CHARS;

/// The `Idempotency-Key` of a request: names one logical request, so that a client that lost
/// the answer (an instance killed mid-request) may send it again, to any instance, and have it
/// applied once. 1 to [`MAX_REQUEST_KEY_CHARS`] letters, digits, `-`, `_`, `.` or `:` (UUIDs
/// and random hex fit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey(pub(crate) String);

impl RequestKey {
    /// Validates the header's value.
    pub fn parse(text: &str) -> Result<RequestKey, InvalidField> {
        if !contracts::request_key::is_valid(text) {
            return Err(invalid(
                "Idempotency-Key",
                format!(
                    "must be 1 to {MAX_REQUEST_KEY_CHARS} letters, digits, '-', '_', '.' or ':'"
                ),
            ));
        }
        Ok(RequestKey(text.to_owned()))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A student to add, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStudent {
    /// Given name.
    pub first_name: Name,
    /// Family name.
    pub last_name: Name,
}

/// A grade to add, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGrade {
    /// What it was for.
    pub title: Title,
    /// Test, quiz or homework.
    pub grade_type: GradeType,
    /// The score in percent.
    pub score: Score,
}

/// One grade as stored; the API shows it as a [`wire::Grade`].
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    /// Unique across all students.
    pub id: GradeId,
    /// What it was for.
    pub title: Title,
    /// Test, quiz or homework.
    pub grade_type: GradeType,
    /// The score in percent.
    pub score: Score,
}

/// A student as stored, grades in the order they were added, and their mean; the API shows it
/// as a [`wire::Student`].
#[derive(Debug, Clone, PartialEq)]
pub struct Student {
    /// Assigned on creation, never reused.
    pub id: StudentId,
    /// Given name.
    pub first_name: Name,
    /// Family name.
    pub last_name: Name,
    /// Mean of the scores; `None` (JSON `null`) before the first grade.
    pub average: Option<f64>,
    /// Oldest first.
    pub grades: Vec<Grade>,
}

impl Student {
    /// Assembles a student, computing the average so it can never disagree with the grades.
    pub fn new(id: StudentId, first_name: Name, last_name: Name, grades: Vec<Grade>) -> Student {
        let average = (!grades.is_empty())
            .then(|| grades.iter().map(|g| g.score.get()).sum::<f64>() / grades.len() as f64);
        Student {
            id,
            first_name,
            last_name,
            average,
            grades,
        }
    }
}

impl From<Grade> for wire::Grade {
    fn from(grade: Grade) -> wire::Grade {
        wire::Grade {
            // Ids are positive rowids: the cast keeps their value.
            id: grade.id.0 as u64,
            title: grade.title.0,
            kind: grade.grade_type,
            score: grade.score.0,
        }
    }
}

impl From<Student> for wire::Student {
    fn from(student: Student) -> wire::Student {
        wire::Student {
            id: student.id.0 as u64,
            first_name: student.first_name.0,
            last_name: student.last_name.0,
            average: student.average,
            grades: student.grades.into_iter().map(wire::Grade::from).collect(),
        }
    }
}

/// `text`, cut to [`MAX_ECHO_CHARS`] characters with an ellipsis when longer.
fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_whole_numbers_within_i64() {
        assert_eq!(StudentId::parse("7"), Ok(StudentId(7)));
        assert_eq!(GradeId::parse(&i64::MAX.to_string()), Ok(GradeId(i64::MAX)));
        let bad = "0 07 -1 +7 7.0 0x7 abc 9223372036854775808 99999999999999999999999".split(' ');
        for bad in bad.chain(["", " 7"]) {
            assert!(StudentId::parse(bad).is_err(), "{bad:?}");
        }
        let err = StudentId::parse(&"x".repeat(1000)).unwrap_err().to_string();
        assert!(
            err.starts_with("no student with id \"xxx") && err.len() < 200,
            "{err}"
        );
    }

    #[test]
    fn labels_need_a_visible_character_and_no_bidi_control() {
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{2060}\u{FEFF}",
            "\u{3164}\u{00AD}",
            "\u{E0041}",
            " \u{200D} ",
        ] {
            let err = Name::parse("firstName", invisible).unwrap_err().to_string();
            assert!(
                err.starts_with("firstName: must contain at least one visible"),
                "{invisible:?}: {err}"
            );
        }
        for bidi in [
            "Ada\u{202E}ecalevol",
            "\u{2067}Ada",
            "Quiz\u{200F}",
            "x\u{061C}y",
        ] {
            let err = Title::parse(bidi).unwrap_err().to_string();
            assert!(
                err.starts_with("title: must not contain bidirectional controls"),
                "{bidi:?}: {err}"
            );
        }
        // Zero-width joiners and variation selectors inside real text are part of it.
        for fine in [
            "👩\u{200D}🔬",
            "क्\u{200D}ष",
            "Zoë",
            "李小龍",
            "Quiz ❤\u{FE0F}",
        ] {
            assert_eq!(Title::parse(fine).unwrap().as_str(), fine);
        }
    }

    #[test]
    fn scores_are_finite_and_from_0_to_100() {
        for good in [0.0, 100.0, 92.5, 1e-9] {
            assert_eq!(Score::parse(good).map(Score::get), Ok(good));
        }
        assert!(Score::parse(-0.0).unwrap().get().is_sign_positive());
        for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                Score::parse(bad).unwrap_err().to_string(),
                "score: must be between 0 and 100"
            );
        }
    }

    #[test]
    fn labels_are_trimmed_counted_in_characters_and_keep_html() {
        assert_eq!(Title::parse("  Quiz 1 ").unwrap().as_str(), "Quiz 1");
        assert_eq!(Title::parse(&"é".repeat(200)).unwrap().as_str().len(), 400);
        let too_long = Title::parse(&"é".repeat(201)).unwrap_err();
        assert_eq!(
            too_long.to_string(),
            "title: must be at most 200 characters, got 201"
        );
        assert_eq!(
            Title::parse(" \n ").unwrap_err().problem,
            "must not be empty"
        );
        assert!(
            Title::parse("line\nbreak")
                .unwrap_err()
                .problem
                .contains("control characters")
        );

        let html = "<script>alert('x')</script>";
        assert_eq!(Name::parse("firstName", html).unwrap().as_str(), html);
        assert!(Name::parse("lastName", &"Ü".repeat(100)).is_ok());
        assert_eq!(
            Name::parse("lastName", &"a".repeat(101)).unwrap_err().field,
            "lastName"
        );
    }

    #[test]
    fn grade_types_parse_in_any_case_and_errors_list_the_allowed_ones() {
        let parsed: Vec<GradeType> = ["Test", "quiz", " HOMEWORK "]
            .map(|t| parse_grade_type(t).unwrap())
            .into();
        assert_eq!(parsed, GradeType::ALL);
        let err = parse_grade_type("Exam").unwrap_err().to_string();
        assert_eq!(
            err,
            "type: \"Exam\" is not a grade type: use Test, Quiz or Homework"
        );
    }

    #[test]
    fn average_is_the_mean_or_none_without_grades() {
        let name = || Name("A".to_owned());
        let grade = |id, score| Grade {
            id: GradeId(id),
            title: Title("t".into()),
            grade_type: GradeType::Quiz,
            score: Score(score),
        };
        assert_eq!(
            Student::new(StudentId(1), name(), name(), vec![]).average,
            None
        );
        let two = Student::new(
            StudentId(1),
            name(),
            name(),
            vec![grade(1, 80.0), grade(2, 95.0)],
        );
        assert_eq!(two.average, Some(87.5));
    }

    /// Properties of every validator over generated input. proptest rather than a fuzzer: the
    /// validators are pure functions whose whole contract (accepts exactly these, never panics,
    /// names the field) fits in a few properties, it runs inside `cargo test` on stable Rust,
    /// and a failure shrinks to a minimal input. The seed is fixed so that CI runs the same
    /// cases every time; `PROPTEST_RNG_SEED=n` explores others.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

        fn config() -> Config {
            let seed = std::env::var("PROPTEST_RNG_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0x6772_6164_6562_6f6f);
            Config {
                rng_algorithm: RngAlgorithm::ChaCha,
                rng_seed: RngSeed::Fixed(seed),
                failure_persistence: None,
                ..Config::with_cases(256)
            }
        }

        /// An error message echoes at most 40 characters of the value, escaped: a huge or
        /// hostile value makes neither a huge message nor a control character in a log line.
        fn is_short_and_printable(message: &str) -> bool {
            message.chars().count() < 600 && !message.chars().any(char::is_control)
        }

        /// Text with what breaks naive validators: controls, spaces, HTML, non-ASCII.
        fn nasty_text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[ \t\n\r\u{0}\u{1b}\u{85}\u{2028}<>&\"'a-zé]{0,40}",
                "[a\u{200B}\u{200D}\u{202E}\u{2066}\u{FEFF}\u{3164} ]{0,8}",
                "[a-z ]{190,210}",
            ]
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn a_score_is_accepted_exactly_when_finite_and_from_0_to_100(value in any::<f64>()) {
                let valid = value.is_finite() && (0.0..=100.0).contains(&value);
                match Score::parse(value) {
                    Ok(score) => {
                        prop_assert!(valid);
                        prop_assert_eq!(score.get(), value);
                        prop_assert!(score.get().is_sign_positive());
                    }
                    Err(err) => {
                        prop_assert!(!valid);
                        prop_assert_eq!(err.to_string(), "score: must be between 0 and 100");
                    }
                }
            }

            #[test]
            fn every_positive_i64_is_an_id_and_reads_back(id in 1..=i64::MAX) {
                prop_assert_eq!(StudentId::parse(&id.to_string()), Ok(StudentId(id)));
                prop_assert_eq!(GradeId::parse(&id.to_string()).map(|g| g.to_string()), Ok(id.to_string()));
            }

            #[test]
            fn an_id_is_only_ever_plain_digits_and_errors_stay_short(text in nasty_text()) {
                match StudentId::parse(&text) {
                    Ok(StudentId(id)) => {
                        prop_assert!(text.bytes().all(|b| b.is_ascii_digit()) && id > 0);
                        prop_assert_eq!(id.to_string(), text);
                    }
                    Err(err) => {
                        let message = err.to_string();
                        prop_assert!(message.starts_with("no student with id "), "{}", message);
                        prop_assert!(is_short_and_printable(&message), "{}", message);
                    }
                }
            }

            #[test]
            fn a_label_is_the_trimmed_text_when_it_follows_the_rules(text in nasty_text()) {
                let trimmed = text.trim();
                let valid = !trimmed.is_empty()
                    && !trimmed.chars().any(char::is_control)
                    && !trimmed.chars().any(is_bidi_control)
                    && trimmed.chars().any(is_visible)
                    && trimmed.chars().count() <= MAX_TITLE_CHARS;
                match Title::parse(&text) {
                    Ok(title) => {
                        prop_assert!(valid);
                        prop_assert_eq!(title.as_str(), trimmed);
                    }
                    Err(err) => {
                        prop_assert!(!valid);
                        prop_assert!(err.to_string().starts_with("title: "));
                    }
                }
                let name = Name::parse("lastName", &text);
                prop_assert_eq!(
                    name.is_ok(),
                    valid && trimmed.chars().count() <= MAX_NAME_CHARS
                );
                if let Err(err) = name {
                    prop_assert_eq!(err.field, "lastName");
                }
            }

            #[test]
            fn a_grade_type_is_one_of_three_names_in_any_case(text in nasty_text()) {
                let known = ["test", "quiz", "homework"].contains(&text.trim().to_ascii_lowercase().as_str());
                match parse_grade_type(&text) {
                    Ok(kind) => prop_assert!(known && kind.as_str().eq_ignore_ascii_case(text.trim())),
                    Err(err) => {
                        prop_assert!(!known);
                        let message = err.to_string();
                        prop_assert!(message.starts_with("type: ") && message.ends_with("use Test, Quiz or Homework"));
                        prop_assert!(is_short_and_printable(&message), "{}", message);
                    }
                }
            }

            #[test]
            fn a_request_key_is_1_to_100_safe_characters(text in prop_oneof![nasty_text(), "[A-Za-z0-9._:-]{0,110}"]) {
                let valid = (1..=MAX_REQUEST_KEY_CHARS).contains(&text.len())
                    && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                match RequestKey::parse(&text) {
                    Ok(key) => prop_assert!(valid && key.as_str() == text),
                    Err(err) => prop_assert!(!valid && err.field == "Idempotency-Key"),
                }
            }
        }
    }
}
