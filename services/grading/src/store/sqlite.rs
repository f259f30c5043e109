//! Students and grades in SQLite (`<data-dir>/grading.sqlite3`), for instances on one host.
//!
//! SQLite calls block, so none runs on an async worker: reads take one of a few reader
//! connections inside `spawn_blocking`, writes take the one writer connection the same way and
//! run in a transaction. WAL mode lets reads proceed while a write commits, and
//! `synchronous=FULL` makes every acknowledged write survive a power cut. The one exception is
//! [`SqliteStore::change_stamp`], which never waits and lets [`crate::cache`] skip repeated reads.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::types::{FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tokio::sync::Semaphore;

use super::host_guard::{HostGuard, HostId};
use super::{
    DEMO_GRADES, DEMO_STUDENTS, SCHEMA_VERSION, StoreError, replayed_grade, replayed_student,
};
use crate::domain::{
    Grade, GradeId, GradeType, Name, NewGrade, NewStudent, RequestKey, Score, Student, StudentId,
    Title,
};
use crate::wal_index::{self, WalIndex};

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "grading.sqlite3";
/// Most reads running at once, and so most reader connections ever open.
pub(super) const READERS: usize = 4;
/// How long a statement waits for another process's lock (several instances may share a file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// AUTOINCREMENT so that an id, once handed out in a `Location`, never names another row later.
/// `PRAGMA user_version` is [`SCHEMA_VERSION`] once this schema exists; 0 means a new database.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS students (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS grades (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        student_id INTEGER NOT NULL REFERENCES students (id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('Test', 'Quiz', 'Homework')),
        score REAL NOT NULL CHECK (score BETWEEN 0 AND 100)
    );
    CREATE INDEX IF NOT EXISTS grades_by_student ON grades (student_id, id);
    -- The Idempotency-Key each keyed grade was added with. Added without a version bump: it is
    -- created on every open when missing, and builds that do not know it leave it alone.
    CREATE TABLE IF NOT EXISTS grade_requests (
        key TEXT PRIMARY KEY,
        grade_id INTEGER NOT NULL REFERENCES grades (id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    -- The same for students added with a key (the portal's form sends one).
    CREATE TABLE IF NOT EXISTS student_requests (
        key TEXT PRIMARY KEY,
        student_id INTEGER NOT NULL REFERENCES students (id) ON DELETE CASCADE
    ) WITHOUT ROWID;
";

/// What [`SqliteStore::change_stamp`] returns: two equal stamps mean nothing was committed between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeStamp(StampKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StampKind {
    WalIndex(wal_index::Stamp),
    DataVersion(i64),
}

/// How [`SqliteStore::change_stamp`] learns of commits.
enum ChangeProbe {
    /// The WAL index in shared memory, as every connection to a WAL database keeps it.
    WalIndex(WalIndex),
    /// SQLite's change counter, when the filesystem refused WAL mode (there is no index then).
    DataVersion(Mutex<Connection>),
}

/// Handle to the database, cheap to clone (one reference count); every clone shares the same
/// connections.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Tells whether anything was committed, see [`SqliteStore::change_stamp`]. Its WAL-index
    /// map is valid only while a connection of this process has the database open, so `Drop`
    /// drops it before any connection (fields would drop in declaration order).
    changes: ManuallyDrop<ChangeProbe>,
    path: PathBuf,
    /// The only connection that writes: SQLite allows one writer at a time anyway, and queueing on
    /// an async mutex keeps waiting writers off the blocking threads.
    writer: Arc<tokio::sync::Mutex<Connection>>,
    /// Reader connections not in use; never more than [`READERS`] exist, thanks to the permits.
    idle_readers: Mutex<Vec<Connection>>,
    reader_permits: Arc<Semaphore>,
    /// Keeps this instance's lease in the data directory fresh while the store is open.
    _host_guard: HostGuard,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `changes` is never used again: this is the end of `Shared`, and the field is
        // not dropped otherwise. It goes while `writer` and the readers are still open.
        unsafe { ManuallyDrop::drop(&mut self.changes) };
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `dir`. A new database gets the schema and the
    /// demo students in one transaction, so they are added exactly once in the file's life.
    /// Refused while an instance on another host than `host` uses the directory (see
    /// [`HostGuard`]).
    pub async fn open(dir: &Path, host: HostId) -> Result<SqliteStore, StoreError> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let path = dir.join(FILE_NAME);
            SqliteStore::open_blocking(&dir, &path, host).map_err(|source| StoreError::Open {
                path,
                source: Box::new(source),
            })
        })
        .await?
    }

    fn open_blocking(dir: &Path, path: &Path, host: HostId) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        // Before the database is touched: an instance on another host must not write to it.
        let host_guard = HostGuard::claim(dir, host)?;
        let mut writer = connect(path)?;
        migrate(&mut writer)?;
        // After `migrate` has read the file, so that SQLite has built the WAL index; the
        // writer, open as long as any clone of the store, keeps the index file in place.
        let changes = match WalIndex::open(path) {
            Some(index) => ChangeProbe::WalIndex(index),
            None => ChangeProbe::DataVersion(Mutex::new(connect_probe(path)?)),
        };
        let shared = Shared {
            path: path.to_owned(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            idle_readers: Mutex::new(Vec::with_capacity(READERS)),
            reader_permits: Arc::new(Semaphore::new(READERS)),
            changes: ManuallyDrop::new(changes),
            _host_guard: host_guard,
        };
        Ok(SqliteStore {
            shared: Arc::new(shared),
        })
    }

    /// All students with their grades, ordered by id (two queries, whatever the count).
    pub async fn students(&self) -> Result<Vec<Student>, StoreError> {
        self.read(list_students).await
    }

    /// Up to `limit` students with ids above `after`, with their grades, ordered by id.
    pub async fn students_page(&self, after: i64, limit: i64) -> Result<Vec<Student>, StoreError> {
        self.read(move |conn| list_students_page(conn, after, limit))
            .await
    }

    /// One student with their grades.
    pub async fn student(&self, id: StudentId) -> Result<Student, StoreError> {
        self.read(move |conn| find_student(conn, id)).await
    }

    /// One grade of one student; a grade of another student is not found here.
    pub async fn grade(&self, student: StudentId, grade: GradeId) -> Result<Grade, StoreError> {
        self.read(move |conn| find_grade(conn, student, grade))
            .await
    }

    /// Adds a student (without grades) and returns it with its new id. With a `key`, a request
    /// already applied under that key is not applied again: the student it added is returned.
    pub async fn add_student(
        &self,
        new: NewStudent,
        key: Option<RequestKey>,
    ) -> Result<Student, StoreError> {
        self.write(move |tx| {
            if let Some(key) = &key
                && let Some(id) = keyed_student(tx, key)?
            {
                return replayed_student(student_in(tx, id)?, &new);
            }
            let id = insert_student(tx, new.first_name.as_str(), new.last_name.as_str())?;
            if let Some(key) = &key {
                tx.prepare_cached(
                    "INSERT INTO student_requests (key, student_id) VALUES (?1, ?2)",
                )?
                .execute(params![key.as_str(), id.0])?;
            }
            Ok(Student::new(id, new.first_name, new.last_name, Vec::new()))
        })
        .await
    }

    /// Replaces a grade's title, type and score; the same change made twice leaves one result.
    pub async fn update_grade(
        &self,
        student: StudentId,
        grade: GradeId,
        new: NewGrade,
    ) -> Result<Grade, StoreError> {
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE grades SET title = ?1, type = ?2, score = ?3
                     WHERE id = ?4 AND student_id = ?5",
                )?
                .execute(params![
                    new.title.as_str(),
                    new.grade_type.as_str(),
                    new.score.get(),
                    grade.0,
                    student.0
                ])?;
            if changed == 0 {
                // Says which of the two is unknown.
                find_grade(tx, student, grade)?;
            }
            Ok(Grade {
                id: grade,
                title: new.title,
                grade_type: new.grade_type,
                score: new.score,
            })
        })
        .await
    }

    /// Removes a grade (and the record of the key it was added with, if any).
    pub async fn delete_grade(&self, student: StudentId, grade: GradeId) -> Result<(), StoreError> {
        self.write(move |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM grades WHERE id = ?1 AND student_id = ?2")?
                .execute(params![grade.0, student.0])?;
            if deleted == 0 {
                find_grade(tx, student, grade)?;
            }
            Ok(())
        })
        .await
    }

    /// Adds a grade to an existing student and returns it with its new id. With a `key`, a
    /// request already applied under that key (by any instance sharing this database) is not
    /// applied again: the grade it added is returned, the same transaction having recorded both.
    pub async fn add_grade(
        &self,
        student: StudentId,
        new: NewGrade,
        key: Option<RequestKey>,
    ) -> Result<Grade, StoreError> {
        self.write(move |tx| {
            if let Some(key) = &key
                && let Some((owner, grade)) = keyed_grade(tx, key)?
            {
                return replayed_grade(owner, grade, student, &new);
            }
            if !student_exists(tx, student)? {
                return Err(StoreError::NoStudent(student));
            }
            let id = insert_grade(
                tx,
                student,
                new.title.as_str(),
                new.grade_type,
                new.score.get(),
            )?;
            if let Some(key) = &key {
                tx.prepare_cached("INSERT INTO grade_requests (key, grade_id) VALUES (?1, ?2)")?
                    .execute(params![key.as_str(), id.0])?;
            }
            Ok(Grade {
                id,
                title: new.title,
                grade_type: new.grade_type,
                score: new.score,
            })
        })
        .await
    }

    /// Runs `query` on a reader connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // The permit moves into the task: if the request is cancelled, the task still holds it
        // until it has returned its connection, so the pool never grows past READERS.
        let permit = Arc::clone(&self.shared.reader_permits)
            .acquire_owned()
            .await
            .expect("the reader semaphore is never closed");
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match store.lock_idle_readers().pop() {
                Some(conn) => conn,
                None => connect_reader(&store.shared.path)?,
            };
            let result = query(&conn);
            store.lock_idle_readers().push(conn);
            result
        })
        .await?
    }

    /// Runs `work` in an immediate transaction on the writer connection, committing on `Ok`.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let mut writer = Arc::clone(&self.shared.writer).lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await?
        .map_err(|err| match err {
            // SQLITE_FULL rolls the transaction back: nothing of it was stored.
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                StoreError::DiskFull
            }
            other => other,
        })
    }

    /// A value that changes whenever any connection commits: this store's writer or another
    /// process sharing the file. `None` when it cannot be read at once; callers then read
    /// through. The one call made on the caller's thread, and it never waits: in WAL mode it
    /// reads the WAL index's header from shared memory (no lock, no system call); otherwise it
    /// runs `PRAGMA data_version` on a connection of its own with a busy timeout of 0.
    pub fn change_stamp(&self) -> Option<ChangeStamp> {
        match &*self.shared.changes {
            ChangeProbe::WalIndex(index) => {
                index.stamp().map(|s| ChangeStamp(StampKind::WalIndex(s)))
            }
            ChangeProbe::DataVersion(probe) => {
                let probe = probe.lock().unwrap_or_else(PoisonError::into_inner);
                probe
                    .prepare_cached("PRAGMA data_version")
                    .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
                    .map(|v| ChangeStamp(StampKind::DataVersion(v)))
                    .ok()
            }
        }
    }

    /// Reader connections open and idle, for tests of the pool's bound.
    #[cfg(test)]
    pub(super) fn idle_readers(&self) -> usize {
        self.lock_idle_readers().len()
    }

    /// A panic while a connection was out only loses that connection, so poisoning is harmless.
    fn lock_idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.shared
            .idle_readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection with the settings every connection needs.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the filesystem refused WAL mode; reads will wait for writes");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Plans must not depend on bound values: otherwise SQLite marks `student_id = ?1` as a
    // parameter whose value may change the plan, and since rusqlite clears a statement's bindings
    // when it returns it to the cache, every cached read was re-parsed and re-planned on each use
    // (half the instructions of `GET /students/1`). These few statements have one plan anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// A connection that SQLite itself keeps from writing, so a read path can never change data.
fn connect_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = connect(path)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// The connection behind [`SqliteStore::change_stamp`] when the database is not in WAL mode:
/// read-only, and never waiting for a lock.
fn connect_probe(path: &Path) -> rusqlite::Result<Connection> {
    let conn = connect_reader(path)?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// Creates the schema and, when the file is new (`user_version` 0), adds the demo students. The
/// version, not an empty table, marks "new": a user who deletes every student keeps none.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // Immediate: two instances starting on one new file must not both seed it.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema(version));
    }
    tx.execute_batch(SCHEMA)?;
    if version == 0 {
        for (first, last, scores) in DEMO_STUDENTS {
            let student = insert_student(&tx, first, last)?;
            for ((title, grade_type), score) in DEMO_GRADES.into_iter().zip(scores) {
                insert_grade(&tx, student, title, grade_type, score)?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tracing::info!(
            students = DEMO_STUDENTS.len(),
            "new database: schema created, demo students added"
        );
    }
    tx.commit()?;
    Ok(())
}

fn insert_student(
    tx: &Transaction<'_>,
    first_name: &str,
    last_name: &str,
) -> rusqlite::Result<StudentId> {
    tx.prepare_cached("INSERT INTO students (first_name, last_name) VALUES (?1, ?2)")?
        .execute(params![first_name, last_name])?;
    Ok(StudentId(tx.last_insert_rowid()))
}

fn insert_grade(
    tx: &Transaction<'_>,
    student: StudentId,
    title: &str,
    grade_type: GradeType,
    score: f64,
) -> rusqlite::Result<GradeId> {
    tx.prepare_cached(
        "INSERT INTO grades (student_id, title, type, score) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![student.0, title, grade_type.as_str(), score])?;
    Ok(GradeId(tx.last_insert_rowid()))
}

/// The student added under `key`, if any.
fn keyed_student(conn: &Connection, key: &RequestKey) -> rusqlite::Result<Option<StudentId>> {
    conn.prepare_cached("SELECT student_id FROM student_requests WHERE key = ?1")?
        .query_row([key.as_str()], |row| Ok(StudentId(row.get(0)?)))
        .optional()
}

/// The grade added under `key`, with its student, if any.
fn keyed_grade(
    conn: &Connection,
    key: &RequestKey,
) -> rusqlite::Result<Option<(StudentId, Grade)>> {
    conn.prepare_cached(
        "SELECT g.id, g.title, g.type, g.score, g.student_id FROM grade_requests r
         JOIN grades g ON g.id = r.grade_id WHERE r.key = ?1",
    )?
    .query_row([key.as_str()], |row| {
        Ok((StudentId(row.get(4)?), grade_from_row(row)?))
    })
    .optional()
}

fn student_exists(conn: &Connection, id: StudentId) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM students WHERE id = ?1")?
        .exists([id.0])
}

/// The columns `grade_from_row` reads, in order.
const GRADE_COLUMNS: &str = "id, title, type, score";

fn grade_from_row(row: &Row<'_>) -> rusqlite::Result<Grade> {
    Ok(Grade {
        id: GradeId(row.get(0)?),
        title: Title(row.get(1)?),
        grade_type: grade_type_from(row.get_ref(2)?).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, err.into())
        })?,
        score: Score(row.get(3)?),
    })
}

fn list_students(conn: &Connection) -> Result<Vec<Student>, StoreError> {
    // One snapshot for both queries, so each student sees exactly the grades committed with it.
    let tx = conn.unchecked_transaction()?;
    let mut grades_of: HashMap<i64, Vec<Grade>> = HashMap::new();
    let mut grades = tx.prepare_cached(&format!(
        "SELECT {GRADE_COLUMNS}, student_id FROM grades ORDER BY id"
    ))?;
    let mut rows = grades.query([])?;
    while let Some(row) = rows.next()? {
        grades_of
            .entry(row.get(4)?)
            .or_default()
            .push(grade_from_row(row)?);
    }
    let mut students =
        tx.prepare_cached("SELECT id, first_name, last_name FROM students ORDER BY id")?;
    let students = students
        .query_map([], |row| {
            let id: i64 = row.get(0)?;
            let grades = grades_of.remove(&id).unwrap_or_default();
            Ok(Student::new(
                StudentId(id),
                Name(row.get(1)?),
                Name(row.get(2)?),
                grades,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(students)
}

fn list_students_page(
    conn: &Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<Student>, StoreError> {
    // One snapshot for both queries, as for the whole list.
    let tx = conn.unchecked_transaction()?;
    let names = tx
        .prepare_cached(
            "SELECT id, first_name, last_name FROM students WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?
        .query_map([after, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<(i64, String, String)>>>()?;
    let (Some(first), Some(last)) = (names.first(), names.last()) else {
        return Ok(Vec::new());
    };
    // The page's students are every student from its first id to its last, so their grades are
    // one range of the (student_id, id) index, already in the order they are shown.
    let mut grades_of: HashMap<i64, Vec<Grade>> = HashMap::with_capacity(names.len());
    let mut grades = tx.prepare_cached(&format!(
        "SELECT {GRADE_COLUMNS}, student_id FROM grades
         WHERE student_id BETWEEN ?1 AND ?2 ORDER BY student_id, id"
    ))?;
    let mut rows = grades.query([first.0, last.0])?;
    while let Some(row) = rows.next()? {
        grades_of
            .entry(row.get(4)?)
            .or_default()
            .push(grade_from_row(row)?);
    }
    Ok(names
        .into_iter()
        .map(|(id, first_name, last_name)| {
            let grades = grades_of.remove(&id).unwrap_or_default();
            Student::new(StudentId(id), Name(first_name), Name(last_name), grades)
        })
        .collect())
}

fn find_student(conn: &Connection, id: StudentId) -> Result<Student, StoreError> {
    // One snapshot for both queries.
    let tx = conn.unchecked_transaction()?;
    student_in(&tx, id)
}

/// One student with their grades, read inside the caller's transaction.
fn student_in(tx: &Connection, id: StudentId) -> Result<Student, StoreError> {
    let names = tx
        .prepare_cached("SELECT first_name, last_name FROM students WHERE id = ?1")?
        .query_row([id.0], |row| Ok((Name(row.get(0)?), Name(row.get(1)?))))
        .optional()?;
    let Some((first_name, last_name)) = names else {
        return Err(StoreError::NoStudent(id));
    };
    let grades = tx
        .prepare_cached(&format!(
            "SELECT {GRADE_COLUMNS} FROM grades WHERE student_id = ?1 ORDER BY id"
        ))?
        .query_map([id.0], grade_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Student::new(id, first_name, last_name, grades))
}

fn find_grade(conn: &Connection, student: StudentId, grade: GradeId) -> Result<Grade, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {GRADE_COLUMNS} FROM grades WHERE id = ?1 AND student_id = ?2"
        ))?
        .query_row([grade.0, student.0], grade_from_row)
        .optional()?;
    match found {
        Some(found) => Ok(found),
        // Only on a miss: a second query to say which of the two is unknown.
        None if student_exists(conn, student)? => Err(StoreError::NoGrade { student, grade }),
        None => Err(StoreError::NoStudent(student)),
    }
}

/// The grade type a `type` column holds (the schema's CHECK allows only the three names).
fn grade_type_from(value: ValueRef<'_>) -> FromSqlResult<GradeType> {
    value
        .as_str()?
        .parse()
        .map_err(|err| FromSqlError::Other(Box::new(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_student(first: &str, last: &str) -> NewStudent {
        NewStudent {
            first_name: Name::parse("firstName", first).unwrap(),
            last_name: Name::parse("lastName", last).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_wal_database_is_checked_for_changes_through_its_wal_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), HostId::of_this_host())
            .await
            .unwrap();
        // Not the fallback, which costs a lock and two system calls per request.
        assert!(matches!(*store.shared.changes, ChangeProbe::WalIndex(_)));
        let before = store.change_stamp().unwrap();
        assert_eq!(store.change_stamp(), Some(before), "nothing was committed");
        store
            .add_student(new_student("Peter", "Parker"), None)
            .await
            .unwrap();
        assert_ne!(store.change_stamp(), Some(before));
    }

    #[tokio::test]
    async fn a_new_database_is_in_wal_mode_with_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("nested");
        let _store = SqliteStore::open(&nested, HostId::of_this_host())
            .await
            .unwrap();

        let conn = Connection::open(dir.path().join("nested").join(FILE_NAME)).unwrap();
        let pragma = |name: &str| {
            conn.pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .unwrap()
        };
        assert_eq!(
            pragma("journal_mode"),
            rusqlite::types::Value::Text("wal".into())
        );
        assert_eq!(
            pragma("user_version"),
            rusqlite::types::Value::Integer(SCHEMA_VERSION)
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path(), HostId::of_this_host())
            .await
            .err()
            .expect("a newer schema must be refused");
        assert!(
            err.to_string()
                .contains("schema version is 2, newer than this build's 1"),
            "{err}"
        );
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
