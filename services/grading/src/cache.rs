//! The answers to `GET /students` and `GET /students/{id}`, kept serialized for as long as the
//! database has not changed, so that a repeated read costs neither a blocking task nor a query.
//!
//! The database stays the source of truth: every lookup first takes the store's change stamp
//! ([`Store::change_stamp`]), which moves on every commit by any connection, this instance's
//! writer or another process sharing the file. An entry is only served under the stamp that was
//! current before it was read from the database, so a commit that completed before a request
//! started is always visible to it. When no stamp can be read without waiting, the request reads
//! through, as if there were no cache; so does every request on PostgreSQL, which has no stamp.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use contracts::grading as wire;

use crate::domain::StudentId;
use crate::error::ApiError;
use crate::store::{ChangeStamp, Store};

/// Most single-student answers kept; past it, new ones are served but not kept (~250 B each).
const MAX_STUDENTS: usize = 1024;
/// Most pages of the student list kept (a page of 51 students with 20 grades each is ~70 KB).
const MAX_PAGES: usize = 256;

/// Serialized answers, shared by every request of one instance. Cheap to clone.
#[derive(Clone, Default)]
pub struct JsonCache {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Default)]
struct Entries {
    /// The database's change stamp the entries were read under.
    stamp: Option<ChangeStamp>,
    students: Option<Bytes>,
    student: HashMap<StudentId, Bytes>,
    /// Pages of the list by where they start and how long they are.
    pages: HashMap<(Option<u64>, usize), Bytes>,
}

impl JsonCache {
    /// The JSON of every student, as `warp::reply::json` would write them.
    pub async fn students(&self, store: &Store) -> Result<Bytes, ApiError> {
        let stamp = store.change_stamp();
        if let Some(hit) = self.lookup(stamp, |e| e.students.clone()) {
            return Ok(hit);
        }
        let students: Vec<wire::Student> = Box::pin(store.students())
            .await?
            .into_iter()
            .map(wire::Student::from)
            .collect();
        let json = to_json(&students);
        self.keep(stamp, |e| e.students = Some(json.clone()));
        Ok(json)
    }

    /// The JSON of one page of the student list, as `warp::reply::json` would write it.
    pub async fn students_page(
        &self,
        store: &Store,
        page: wire::StudentsPage,
    ) -> Result<Bytes, ApiError> {
        let key = (page.after.map(|id| id.0), page.limit);
        let stamp = store.change_stamp();
        if let Some(hit) = self.lookup(stamp, |e| e.pages.get(&key).cloned()) {
            return Ok(hit);
        }
        // Ids in paths are at most i64::MAX (contracts' rule), so the cast keeps the value.
        let after = page.after.map(|id| StudentId(id.0 as i64));
        let students: Vec<wire::Student> = Box::pin(store.students_page(after, page.limit))
            .await?
            .into_iter()
            .map(wire::Student::from)
            .collect();
        let json = to_json(&students);
        self.keep(stamp, |e| {
            if e.pages.len() < MAX_PAGES {
                e.pages.insert(key, json.clone());
            }
        });
        Ok(json)
    }

    /// The JSON of one student, as `warp::reply::json` would write it.
    pub async fn student(&self, store: &Store, id: StudentId) -> Result<Bytes, ApiError> {
        let stamp = store.change_stamp();
        if let Some(hit) = self.lookup(stamp, |e| e.student.get(&id).cloned()) {
            return Ok(hit);
        }
        // Boxed: the store's future (PostgreSQL's above all) is large, and inline it would make
        // every hit's future as large, copied on each move through warp's filters.
        let json = to_json(&wire::Student::from(Box::pin(store.student(id)).await?));
        self.keep(stamp, |e| {
            if e.student.len() < MAX_STUDENTS {
                e.student.insert(id, json.clone());
            }
        });
        Ok(json)
    }

    /// The entry `get` finds under `stamp`; everything is dropped when the stamp changed.
    fn lookup(
        &self,
        stamp: Option<ChangeStamp>,
        get: impl FnOnce(&Entries) -> Option<Bytes>,
    ) -> Option<Bytes> {
        let stamp = stamp?;
        let mut entries = self.lock();
        if entries.stamp != Some(stamp) {
            *entries = Entries {
                stamp: Some(stamp),
                ..Entries::default()
            };
            return None;
        }
        get(&entries)
    }

    /// Keeps what was read after `stamp` was current, unless the database changed meanwhile
    /// (then the next lookup reads again).
    fn keep(&self, stamp: Option<ChangeStamp>, put: impl FnOnce(&mut Entries)) {
        let mut entries = self.lock();
        if stamp.is_some() && entries.stamp == stamp {
            put(&mut entries);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are whole values: a panic elsewhere cannot leave one half-written.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(value)
        .expect("students and grades are plain data and always serialize")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Name, NewStudent};
    use crate::store::testing::{TestDatabase, on_each_backend};
    use serde_json::Value;

    on_each_backend!(a_commit_by_this_store_or_another_process_is_seen_at_once);

    fn first_name(json: &Bytes) -> String {
        let value: Value = serde_json::from_slice(json).unwrap();
        value["firstName"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn answers_are_the_json_the_store_gives_and_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let cache = JsonCache::default();
        let one = cache.student(&store, StudentId(1)).await.unwrap();
        let tony = wire::Student::from(store.student(StudentId(1)).await.unwrap());
        let expected = serde_json::to_vec(&tony).unwrap();
        assert_eq!(one.as_ref(), expected.as_slice());
        let all = cache.students(&store).await.unwrap();
        let students = store.students().await.unwrap().into_iter();
        let expected = serde_json::to_vec(&students.map(wire::Student::from).collect::<Vec<_>>());
        let expected = expected.unwrap();
        assert_eq!(all.as_ref(), expected.as_slice());
        // Kept: the second answer is the same buffer, not a new read.
        let again = cache.student(&store, StudentId(1)).await.unwrap();
        assert_eq!(again.as_ptr(), one.as_ptr());
        assert!(matches!(
            cache.student(&store, StudentId(99)).await,
            Err(ApiError::NoStudent(StudentId(99)))
        ));
    }

    async fn a_commit_by_this_store_or_another_process_is_seen_at_once(db: TestDatabase) {
        let store = db.open().await;
        let cache = JsonCache::default();
        assert_eq!(
            first_name(&cache.student(&store, StudentId(1)).await.unwrap()),
            "Tony"
        );
        let before = cache.students(&store).await.unwrap();

        // Another instance sharing the database: a connection this store knows nothing of.
        db.execute("UPDATE students SET first_name = 'Anthony' WHERE id = 1")
            .await;
        assert_eq!(
            first_name(&cache.student(&store, StudentId(1)).await.unwrap()),
            "Anthony"
        );

        // This store's own writer.
        let new = NewStudent {
            first_name: Name::parse("firstName", "Wanda").unwrap(),
            last_name: Name::parse("lastName", "Maximoff").unwrap(),
        };
        store.add_student(new, None).await.unwrap();
        let after: Value = serde_json::from_slice(&cache.students(&store).await.unwrap()).unwrap();
        let before: Value = serde_json::from_slice(&before).unwrap();
        assert_eq!(
            after.as_array().unwrap().len(),
            before.as_array().unwrap().len() + 1
        );
    }
}
