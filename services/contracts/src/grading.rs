//! Students and grades as they cross the wire: what grading answers (`GET /students`,
//! `GET /students/{id}`, a grade added or changed) and what it takes (`POST /students`,
//! `POST /students/{id}/grades`, `PUT /students/{id}/grades/{gradeId}`). Grading validates what
//! it takes (names, titles, scores, types); these are the shapes only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// A student as grading answers it: grades oldest first, and their mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Student {
    /// Assigned on creation, never reused.
    pub id: u64,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Mean of the scores; `None` (JSON `null`) before the first grade.
    #[serde(default)]
    pub average: Option<f64>,
    /// Oldest first.
    #[serde(default)]
    pub grades: Vec<Grade>,
}

/// One grade of a student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    /// Unique across all students.
    pub id: u64,
    /// What it was for, e.g. "Quiz 3".
    pub title: String,
    /// Test, quiz or homework.
    #[serde(rename = "type")]
    pub kind: GradeType,
    /// The score in percent, 0 to 100.
    pub score: f64,
}

/// The kind of assessment a grade is for; written `"Test"`, `"Quiz"` or `"Homework"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GradeType {
    /// A test.
    Test,
    /// A quiz.
    Quiz,
    /// A homework assignment.
    Homework,
}

impl GradeType {
    /// Every grade type, in the order forms offer them and error messages list them.
    pub const ALL: [GradeType; 3] = [GradeType::Test, GradeType::Quiz, GradeType::Homework];

    /// The name as written on the wire and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            GradeType::Test => "Test",
            GradeType::Quiz => "Quiz",
            GradeType::Homework => "Homework",
        }
    }
}

impl fmt::Display for GradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is none of the grade types' (see [`GradeType::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownGradeType;

impl fmt::Display for UnknownGradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a grade type: use Test, Quiz or Homework")
    }
}

impl std::error::Error for UnknownGradeType {}

impl FromStr for GradeType {
    type Err = UnknownGradeType;

    /// The type with exactly this name. (Grading is more forgiving with what clients send: it
    /// takes the names in any case.)
    fn from_str(text: &str) -> Result<GradeType, UnknownGradeType> {
        GradeType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or(UnknownGradeType)
    }
}

/// The body of `POST /students`. Unknown fields are refused, so a misspelt field is an error
/// rather than silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewStudent {
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
}

/// The body of `POST /students/{id}/grades` and of `PUT /students/{id}/grades/{gradeId}`. The
/// type is text here, so that an unknown one is grading's answer naming the allowed ones rather
/// than a parse error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrade {
    /// What the grade was for.
    pub title: String,
    /// `Test`, `Quiz` or `Homework`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Percent, 0 to 100.
    pub score: f64,
}

/// One page of `GET /students`, asked for with `?limit=N&after=ID`: the students whose id is
/// above `after` (from the first when `None`), at most `limit` of them, in id order, as the same
/// JSON array the whole list is. Without either parameter the answer is every student, as it
/// always was. A page that holds `limit` students may be followed by more; ask for one more
/// than you show to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StudentsPage {
    /// The id of the last student of the previous page.
    pub after: Option<Id>,
    /// At most this many students, 1 to [`StudentsPage::MAX_LIMIT`].
    pub limit: usize,
}

impl StudentsPage {
    /// The query parameter of the page size.
    pub const LIMIT: &str = "limit";
    /// The query parameter of the last id of the previous page.
    pub const AFTER: &str = "after";
    /// The page size when `after` is given alone.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page grading answers.
    pub const MAX_LIMIT: usize = 1000;

    /// `GET /students`'s path and query for this page.
    pub fn path(&self) -> String {
        match self.after {
            Some(after) => format!(
                "/students?{}={}&{}={after}",
                Self::LIMIT,
                self.limit,
                Self::AFTER
            ),
            None => format!("/students?{}={}", Self::LIMIT, self.limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_student_reads_and_writes_as_grading_has_always_written_it() {
        let json = r#"{"id":1,"firstName":"Tony","lastName":"Stark","average":92.5,"grades":[{"id":3,"title":"Quiz 1","type":"Quiz","score":92.5}]}"#;
        let student: Student = serde_json::from_str(json).unwrap();
        assert_eq!(student.grades[0].kind, GradeType::Quiz);
        assert_eq!(serde_json::to_string(&student).unwrap(), json);
        let new =
            r#"{"id":5,"firstName":"Wanda","lastName":"Maximoff","average":null,"grades":[]}"#;
        let wanda: Student = serde_json::from_str(new).unwrap();
        assert_eq!(serde_json::to_string(&wanda).unwrap(), new);
    }

    #[test]
    fn changes_are_sent_with_the_contract_field_names_and_nothing_else() {
        let grade = NewGrade {
            title: "Quiz 2".into(),
            kind: "Quiz".into(),
            score: 88.0,
        };
        assert_eq!(
            serde_json::to_string(&grade).unwrap(),
            r#"{"title":"Quiz 2","type":"Quiz","score":88.0}"#
        );
        let student = NewStudent {
            first_name: "Wanda".into(),
            last_name: "Maximoff".into(),
        };
        assert_eq!(
            serde_json::to_string(&student).unwrap(),
            r#"{"firstName":"Wanda","lastName":"Maximoff"}"#
        );
        let extra = r#"{"firstName":"A","lastName":"B","age":3}"#;
        assert!(serde_json::from_str::<NewStudent>(extra).is_err());
    }

    #[test]
    fn grade_types_have_one_name_each() {
        for kind in GradeType::ALL {
            assert_eq!(kind.as_str().parse(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert_eq!("quiz".parse::<GradeType>(), Err(UnknownGradeType));
    }

    #[test]
    fn a_page_is_asked_for_with_limit_and_after() {
        let first = StudentsPage {
            after: None,
            limit: 51,
        };
        assert_eq!(first.path(), "/students?limit=51");
        let next = StudentsPage {
            after: Some(Id(250)),
            ..first
        };
        assert_eq!(next.path(), "/students?limit=51&after=250");
    }
}
