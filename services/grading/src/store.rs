//! Students and grades, in SQLite (the embedded default, for instances on one host) or in
//! PostgreSQL (for instances on several hosts). The API sees one [`Store`] either way.
//!
//! # Layout
//! - [`sqlite`]: `<data-dir>/grading.sqlite3`, off the async workers, with a change stamp that
//!   lets [`crate::cache`] skip repeated reads.
//! - [`postgres`]: a PostgreSQL server through a small bounded pool; no change stamp, so every
//!   read goes to the server and sees every acknowledged write of every instance.
//! - [`host_guard`]: refuses to open a SQLite directory that an instance on another host uses.

pub mod host_guard;
pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};

use crate::domain::{
    Grade, GradeId, GradeType, NewGrade, NewStudent, RequestKey, Student, StudentId,
};

pub use host_guard::HostId;
pub use postgres::PostgresStore;
pub use sqlite::{ChangeStamp, FILE_NAME, SqliteStore};

/// Version of the schema (SQLite's `user_version`, PostgreSQL's `grading_schema` row); a
/// database without one is new.
pub const SCHEMA_VERSION: i64 = 1;

/// The students a new database starts with, as in the original course, with their scores in
/// [`DEMO_GRADES`].
const DEMO_STUDENTS: [(&str, &str, [f64; 3]); 4] = [
    ("Tony", "Stark", [85.0, 94.0, 89.5]),
    ("Bruce", "Banner", [97.0, 100.0, 92.0]),
    ("Natasha", "Romanoff", [91.0, 88.0, 95.0]),
    ("Peter", "Parker", [78.0, 83.5, 81.0]),
];
const DEMO_GRADES: [(&str, GradeType); 3] = [
    ("Quiz 1", GradeType::Quiz),
    ("Week 1 Homework", GradeType::Homework),
    ("Test 1", GradeType::Test),
];

/// Why a storage operation failed. `NoStudent` and `NoGrade` are answers, the rest are faults.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The student does not exist.
    #[error("no student with id {0}")]
    NoStudent(StudentId),
    /// The student exists but has no grade with this id.
    #[error("student {student} has no grade with id {grade}")]
    NoGrade {
        /// The student asked for.
        student: StudentId,
        /// The grade asked for.
        grade: GradeId,
    },
    /// The data directory or database could not be created, opened or migrated.
    #[error("cannot open the grading database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What failed.
        source: Box<StoreError>,
    },
    /// The data directory could not be created.
    #[error("cannot create the directory: {0}")]
    CreateDir(#[from] std::io::Error),
    /// The `Idempotency-Key` was used before for another request (another student or grade).
    #[error("Idempotency-Key: already used for a different request")]
    KeyReused,
    /// No space left on the device: the change was not stored.
    #[error("disk full")]
    DiskFull,
    /// The file was written by a newer build; changing it could lose what that build stored.
    #[error("its schema version is {0}, newer than this build's {SCHEMA_VERSION}")]
    NewerSchema(i64),
    /// SQLite failed (I/O error, a lock held longer than the busy timeout...).
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the statement panicked.
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A live instance on another host uses this SQLite data directory (see [`host_guard`]).
    #[error(
        "an instance on another host uses this data directory ({0}); SQLite is shared only by \
         instances on one host: instances on several hosts need --database-url (PostgreSQL)"
    )]
    OtherHost(String),
    /// The PostgreSQL server cannot be reached, is restarting, or did not answer in time;
    /// nothing of the request is known to be stored. Says why, for the log only.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused or failed a statement.
    #[error("PostgreSQL: {0}")]
    Postgres(tokio_postgres::Error),
}

/// The answer to a keyed `POST /students` whose key is already stored with `stored`: the same
/// student again when the request is the same, a refusal when the key named another request.
fn replayed_student(stored: Student, new: &NewStudent) -> Result<Student, StoreError> {
    if stored.first_name == new.first_name && stored.last_name == new.last_name {
        Ok(stored)
    } else {
        Err(StoreError::KeyReused)
    }
}

/// The same for a keyed grade: `stored` belongs to `owner`; the request was for `student`.
fn replayed_grade(
    owner: StudentId,
    stored: Grade,
    student: StudentId,
    new: &NewGrade,
) -> Result<Grade, StoreError> {
    let same = owner == student
        && stored.title == new.title
        && stored.grade_type == new.grade_type
        && stored.score == new.score;
    if same {
        Ok(stored)
    } else {
        Err(StoreError::KeyReused)
    }
}

/// Handle to the database, cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub enum Store {
    /// The embedded database, shared only by instances on one host.
    Sqlite(SqliteStore),
    /// A PostgreSQL server, shared by instances anywhere.
    Postgres(PostgresStore),
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `dir`, as an instance of this host.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_sqlite(dir, HostId::of_this_host()).await
    }

    /// Opens (creating if needed) the SQLite database in `dir`, as an instance of `host`.
    pub async fn open_sqlite(dir: &Path, host: HostId) -> Result<Store, StoreError> {
        SqliteStore::open(dir, host).await.map(Store::Sqlite)
    }

    /// Connects to PostgreSQL and creates (or migrates) the schema, adding the demo students to
    /// a new database.
    pub async fn connect_postgres(config: &tokio_postgres::Config) -> Result<Store, StoreError> {
        PostgresStore::connect(config).await.map(Store::Postgres)
    }

    /// All students with their grades, ordered by id, as one snapshot.
    pub async fn students(&self) -> Result<Vec<Student>, StoreError> {
        match self {
            Store::Sqlite(db) => db.students().await,
            Store::Postgres(db) => db.students().await,
        }
    }

    /// Up to `limit` students with ids above `after` (from the first when `None`), with their
    /// grades, ordered by id, as one snapshot. Costs what the page holds, not what the database
    /// holds: both backends walk the students' key and the grades' `(student_id, id)` index.
    pub async fn students_page(
        &self,
        after: Option<StudentId>,
        limit: usize,
    ) -> Result<Vec<Student>, StoreError> {
        let after = after.map_or(0, |id| id.0);
        // A page is at most contracts' MAX_LIMIT; clamp rather than overflow an i64 anyway.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Store::Sqlite(db) => db.students_page(after, limit).await,
            Store::Postgres(db) => db.students_page(after, limit).await,
        }
    }

    /// One student with their grades.
    pub async fn student(&self, id: StudentId) -> Result<Student, StoreError> {
        match self {
            Store::Sqlite(db) => db.student(id).await,
            Store::Postgres(db) => db.student(id).await,
        }
    }

    /// One grade of one student; a grade of another student is not found here.
    pub async fn grade(&self, student: StudentId, grade: GradeId) -> Result<Grade, StoreError> {
        match self {
            Store::Sqlite(db) => db.grade(student, grade).await,
            Store::Postgres(db) => db.grade(student, grade).await,
        }
    }

    /// Adds a student; with a `key`, a request already applied under it returns that student.
    pub async fn add_student(
        &self,
        new: NewStudent,
        key: Option<RequestKey>,
    ) -> Result<Student, StoreError> {
        match self {
            Store::Sqlite(db) => db.add_student(new, key).await,
            Store::Postgres(db) => db.add_student(new, key).await,
        }
    }

    /// Replaces a grade's title, type and score.
    pub async fn update_grade(
        &self,
        student: StudentId,
        grade: GradeId,
        new: NewGrade,
    ) -> Result<Grade, StoreError> {
        match self {
            Store::Sqlite(db) => db.update_grade(student, grade, new).await,
            Store::Postgres(db) => db.update_grade(student, grade, new).await,
        }
    }

    /// Removes a grade.
    pub async fn delete_grade(&self, student: StudentId, grade: GradeId) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(db) => db.delete_grade(student, grade).await,
            Store::Postgres(db) => db.delete_grade(student, grade).await,
        }
    }

    /// Adds a grade; with a `key`, a request already applied under it returns that grade.
    pub async fn add_grade(
        &self,
        student: StudentId,
        new: NewGrade,
        key: Option<RequestKey>,
    ) -> Result<Grade, StoreError> {
        match self {
            Store::Sqlite(db) => db.add_grade(student, new, key).await,
            Store::Postgres(db) => db.add_grade(student, new, key).await,
        }
    }

    /// A value that changes whenever anything is committed, or `None` when there is none to
    /// read at once; the cache then reads through. PostgreSQL never has one: a write
    /// acknowledged by an instance on another host must be visible at once, and no local value
    /// could tell of it.
    pub fn change_stamp(&self) -> Option<ChangeStamp> {
        match self {
            Store::Sqlite(db) => db.change_stamp(),
            Store::Postgres(_) => None,
        }
    }
}

/// What in-crate tests need to run once per backend: a fresh database of each, and
/// [`on_each_backend`] to turn one test body into a test per backend.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh database of one backend for one test, removed when dropped.
    pub(crate) enum TestDatabase {
        /// A temporary data directory.
        Sqlite(tempfile::TempDir),
        /// A PostgreSQL server of this test's own.
        Postgres(testkit::Postgres),
    }

    impl TestDatabase {
        pub(crate) fn sqlite() -> TestDatabase {
            TestDatabase::Sqlite(tempfile::tempdir().expect("a tempdir"))
        }

        /// `None` when PostgreSQL is not installed and the test is skipped (testkit warns).
        pub(crate) async fn postgres() -> Option<TestDatabase> {
            testkit::Postgres::start().await.map(TestDatabase::Postgres)
        }

        /// Opens (the first time: creates) the store, as a starting instance does.
        pub(crate) async fn open(&self) -> Store {
            match self {
                TestDatabase::Sqlite(dir) => Store::open(dir.path()).await,
                TestDatabase::Postgres(server) => {
                    Store::connect_postgres(&server.url().parse().expect("a valid URL")).await
                }
            }
            .expect("the test database opens")
        }

        /// Runs `sql` on a connection of its own, as another program sharing the database would.
        pub(crate) async fn execute(&self, sql: &str) {
            match self {
                TestDatabase::Sqlite(dir) => {
                    let conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
                    conn.pragma_update(None, "foreign_keys", true).unwrap();
                    conn.execute_batch(sql).unwrap();
                }
                TestDatabase::Postgres(server) => {
                    let (client, connection) =
                        tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
                            .await
                            .unwrap();
                    let connection = tokio::spawn(connection);
                    client.batch_execute(sql).await.unwrap();
                    drop(client);
                    let _ = connection.await;
                }
            }
        }

        /// The PostgreSQL server, for tests that stop and restart it.
        pub(crate) fn postgres_server(&mut self) -> Option<&mut testkit::Postgres> {
            match self {
                TestDatabase::Postgres(server) => Some(server),
                TestDatabase::Sqlite(_) => None,
            }
        }
    }

    /// `on_each_backend!(a, b)` makes tests `sqlite::a`, `postgres::a`, ... out of
    /// `async fn a(db: TestDatabase)`, so each test body is written once and run on both.
    macro_rules! on_each_backend {
        ($($test:ident),+ $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test(flavor = "multi_thread")]
                    async fn $test() {
                        super::$test($crate::store::testing::TestDatabase::sqlite()).await;
                    }
                )+
            }
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread")]
                    async fn $test() {
                        if let Some(db) = $crate::store::testing::TestDatabase::postgres().await {
                            super::$test(db).await;
                        }
                    }
                )+
            }
        };
    }
    pub(crate) use on_each_backend;
}

/// The store's behaviour, the same on each backend.
#[cfg(test)]
mod tests {
    use super::testing::{TestDatabase, on_each_backend};
    use super::*;
    use crate::domain::{Name, Score, Title};

    on_each_backend!(
        a_new_database_has_the_demo_students_once_even_when_instances_start_together,
        writes_survive_reopening_and_demo_students_are_added_only_once,
        deleting_every_student_does_not_bring_the_demo_back,
        unknown_students_and_grades_are_told_apart,
        concurrent_reads_and_writes_keep_every_grade,
    );

    fn new_student(first: &str, last: &str) -> NewStudent {
        NewStudent {
            first_name: Name::parse("firstName", first).unwrap(),
            last_name: Name::parse("lastName", last).unwrap(),
        }
    }

    fn new_grade(title: &str, score: f64) -> NewGrade {
        NewGrade {
            title: Title::parse(title).unwrap(),
            grade_type: GradeType::Test,
            score: Score::parse(score).unwrap(),
        }
    }

    async fn a_new_database_has_the_demo_students_once_even_when_instances_start_together(
        db: TestDatabase,
    ) {
        let (store, _other) = tokio::join!(db.open(), db.open());
        let students = store.students().await.unwrap();
        assert_eq!(students.len(), DEMO_STUDENTS.len());
        assert_eq!(students[0].first_name.as_str(), "Tony");
        assert!(
            students
                .iter()
                .all(|s| s.grades.len() == 3 && s.average.is_some())
        );
        assert!(students.windows(2).all(|w| w[0].id < w[1].id));
    }

    async fn writes_survive_reopening_and_demo_students_are_added_only_once(db: TestDatabase) {
        let store = db.open().await;
        let added = store
            .add_student(new_student("Wanda", "<b>Maximoff</b>"), None)
            .await
            .unwrap();
        let grade = store
            .add_grade(added.id, new_grade("Quiz 9", 77.5), None)
            .await
            .unwrap();
        drop(store);

        let store = db.open().await;
        assert_eq!(
            store.students().await.unwrap().len(),
            DEMO_STUDENTS.len() + 1
        );
        let reread = store.student(added.id).await.unwrap();
        assert_eq!(reread.last_name.as_str(), "<b>Maximoff</b>");
        assert_eq!(reread.grades, vec![grade.clone()]);
        assert_eq!(reread.average, Some(77.5));
        assert_eq!(store.grade(added.id, grade.id).await.unwrap(), grade);
    }

    async fn deleting_every_student_does_not_bring_the_demo_back(db: TestDatabase) {
        drop(db.open().await);
        db.execute("DELETE FROM students").await;
        let store = db.open().await;
        assert!(store.students().await.unwrap().is_empty());
        assert!(matches!(
            store.grade(StudentId(1), GradeId(1)).await,
            Err(StoreError::NoStudent(_))
        ));
    }

    async fn unknown_students_and_grades_are_told_apart(db: TestDatabase) {
        let store = db.open().await;
        let tony = StudentId(1);
        let bruces_grade = store.student(StudentId(2)).await.unwrap().grades[0].id;
        assert!(matches!(
            store.student(StudentId(99)).await,
            Err(StoreError::NoStudent(StudentId(99)))
        ));
        assert!(matches!(
            store.grade(tony, bruces_grade).await,
            Err(StoreError::NoGrade { .. })
        ));
        assert!(matches!(
            store.grade(StudentId(99), GradeId(1)).await,
            Err(StoreError::NoStudent(_))
        ));
        let refused = store
            .add_grade(StudentId(99), new_grade("x", 1.0), None)
            .await;
        assert!(matches!(refused, Err(StoreError::NoStudent(_))));
    }

    async fn concurrent_reads_and_writes_keep_every_grade(db: TestDatabase) {
        let store = db.open().await;
        let student = store
            .add_student(new_student("Many", "Grades"), None)
            .await
            .unwrap()
            .id;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .add_grade(student, new_grade(&format!("Quiz {i}"), 50.0), None)
                        .await
                        .unwrap();
                    store.students().await.unwrap().len()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), DEMO_STUDENTS.len() + 1);
        }
        assert_eq!(store.student(student).await.unwrap().grades.len(), 40);
        if let Store::Sqlite(sqlite) = &store {
            assert!(sqlite.idle_readers() <= super::sqlite::READERS);
        }
    }
}
