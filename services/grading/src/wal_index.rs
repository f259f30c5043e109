//! "Has any connection committed since?", answered without a lock, a system call or a query: by
//! reading the header of SQLite's WAL index, the `-shm` file that every connection to a WAL-mode
//! database maps into memory, whichever process it lives in.
//!
//! The layout is SQLite's, documented for the unix VFS in <https://sqlite.org/walformat.html>
//! ("The WAL-Index Header"): two copies of a 48-byte header at the start of the file, in native
//! byte order. A committing writer first writes the second copy, then the first, before its
//! commit returns; a reader that finds both copies equal has a consistent header. Every commit
//! changes the header: it raises `mxFrame` (the last valid frame) and `iChange`, and a commit
//! that restarts the WAL after a checkpoint changes the salts. So equal headers mean no commit
//! in between, and a commit that returned before a read began is always seen by that read.
//!
//! The map is only ever read, and read-only: the standard library allows only `Relaxed` atomic
//! loads on memory mapped without write permission (a stronger load may be compiled to a
//! read-modify-write on some targets, which faults), so the ordering comes from explicit
//! fences. It stays valid because the [`crate::store::Store`] that owns it also keeps
//! connections open: SQLite only truncates or rebuilds the `-shm` file when no connection at
//! all has it open. So the map must go before the store's connections do; the store drops it
//! first, explicitly.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use memmap2::{MmapOptions, MmapRaw};

/// Words in one copy of the header (48 bytes).
const HEADER_WORDS: usize = 12;
/// Both copies.
const MAPPED_BYTES: usize = 2 * HEADER_WORDS * 4;
/// `iVersion`, the header's first word, for every SQLite since WAL mode appeared (3.7.0).
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// `isInit` is the first byte of the fourth word; zero until a connection has built the index.
const IS_INIT_WORD: usize = 3;

/// One observed header: equal stamps, no commit in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp([u32; HEADER_WORDS]);

/// A read-only map of the WAL-index header of one database.
pub struct WalIndex {
    map: MmapRaw,
}

impl WalIndex {
    /// Maps the `-shm` file of the database at `db_path`. `None` when there is none to map (the
    /// database is not in WAL mode) or it does not look like the index this code knows; callers
    /// then ask SQLite instead. Call only while a connection of this process has the database
    /// open in WAL mode and has read from it, so that SQLite has built the index.
    pub fn open(db_path: &Path) -> Option<WalIndex> {
        let mut shm_path = db_path.as_os_str().to_owned();
        shm_path.push("-shm");
        let file = File::open(&shm_path).ok()?;
        if file.metadata().ok()?.len() < MAPPED_BYTES as u64 {
            return None;
        }
        // A raw map: never turned into a reference to plain integers, since other processes
        // write it; `word` reads it through atomics.
        let map = MmapOptions::new()
            .len(MAPPED_BYTES)
            .map_raw_read_only(&file)
            .ok()?;
        let index = WalIndex { map };
        let stamp = index.stamp()?;
        (stamp.0[0] == WAL_INDEX_VERSION).then_some(index)
    }

    /// The current header, or `None` while a writer is halfway through updating it or the index
    /// is not built: then nothing can be said, and the caller should read the database.
    pub fn stamp(&self) -> Option<Stamp> {
        let mut first = [0; HEADER_WORDS];
        let mut second = [0; HEADER_WORDS];
        // SQLite's own reader order: the first copy, a barrier, then the second. A writer
        // writes the second copy, a barrier, then the first; so a reader that sees a new first
        // copy sees at least that new second copy, and equal copies are one consistent header.
        for (i, word) in first.iter_mut().enumerate() {
            *word = self.word(i);
        }
        fence(Ordering::Acquire);
        for (i, word) in second.iter_mut().enumerate() {
            *word = self.word(HEADER_WORDS + i);
        }
        // What the caller reads after taking the stamp (its cache) comes after the header.
        fence(Ordering::Acquire);
        let is_init = first[IS_INIT_WORD].to_ne_bytes()[0] != 0;
        (first == second && is_init).then_some(Stamp(first))
    }

    fn word(&self, index: usize) -> u32 {
        debug_assert!(index < 2 * HEADER_WORDS);
        // SAFETY: in bounds (`index` < 24 words, the mapped length) and 4-byte aligned (the map
        // starts on a page). The file is at least that long and SQLite never shrinks it while a
        // connection of this process has it open (see the module documentation), so the memory
        // stays mapped. An atomic load is the sound way to read memory others write; `Relaxed`
        // is the only one allowed on a read-only mapping, the fences in `stamp` order it.
        let word = unsafe { &*self.map.as_ptr().cast::<AtomicU32>().add(index) };
        word.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn wal_database(dir: &Path) -> (std::path::PathBuf, Connection) {
        let path = dir.join("t.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        (path, conn)
    }

    #[test]
    fn every_commit_from_any_connection_changes_the_stamp_and_reads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        let index = WalIndex::open(&path).expect("a WAL database has a WAL index");
        let other = Connection::open(&path).unwrap();

        let mut last = index.stamp().unwrap();
        for i in 0..200 {
            let writer = if i % 2 == 0 { &conn } else { &other };
            writer.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            let now = index.stamp().unwrap();
            assert_ne!(now, last, "commit {i} left the stamp unchanged");
            last = now;
            let _: i64 = other
                .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                .unwrap();
            assert_eq!(index.stamp().unwrap(), last, "a read changed the stamp");
        }
    }

    #[test]
    fn commits_after_a_checkpoint_restarts_the_wal_change_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        let index = WalIndex::open(&path).unwrap();
        let mut seen = vec![index.stamp().unwrap()];
        for i in 0..20 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            // Copies everything back and lets the next commit write the WAL from its start,
            // where mxFrame counts from 1 again: the stamps must still never repeat.
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                .unwrap();
            let stamp = index.stamp().unwrap();
            assert!(
                !seen.contains(&stamp),
                "commit {i} repeated an earlier stamp"
            );
            seen.push(stamp);
        }
    }

    /// Writes a `-shm` header by hand, in place (a map of it stays valid): `version` in both
    /// copies' first word, `is_init` in both copies' fourth, `mx_frame` in the first copy's
    /// fifth word (`mxFrame`) and `second_mx_frame` in the second's, as a writer halfway
    /// through a commit leaves them.
    fn write_header(shm: &Path, version: u32, is_init: bool, mx_frame: u32, second_mx_frame: u32) {
        let mut words = [0u32; 2 * HEADER_WORDS];
        for copy in [0, HEADER_WORDS] {
            words[copy] = version;
            words[copy + IS_INIT_WORD] = u32::from_ne_bytes([u8::from(is_init), 0, 0, 0]);
        }
        words[4] = mx_frame;
        words[HEADER_WORDS + 4] = second_mx_frame;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(shm)
            .unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
    }

    /// Half-written or unbuilt headers must never pass for "nothing committed": the caller
    /// would serve a stale cached answer.
    #[test]
    fn a_header_halfway_through_a_commit_or_not_built_gives_no_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        let shm = dir.path().join("t.sqlite3-shm");
        write_header(&shm, WAL_INDEX_VERSION, true, 7, 7);
        let index = WalIndex::open(&db).expect("a well-formed header maps");
        let settled = index.stamp().expect("equal copies give a stamp");

        // The same map sees the file change: a writer between its two copies.
        write_header(&shm, WAL_INDEX_VERSION, true, 7, 8);
        assert_eq!(index.stamp(), None, "copies differ mid-commit");
        write_header(&shm, WAL_INDEX_VERSION, true, 8, 8);
        let committed = index.stamp().expect("the commit finished");
        assert_ne!(committed, settled);
        write_header(&shm, WAL_INDEX_VERSION, false, 8, 8);
        assert_eq!(index.stamp(), None, "an index not built yet says nothing");

        write_header(&shm, WAL_INDEX_VERSION + 1, true, 8, 8);
        assert!(
            WalIndex::open(&db).is_none(),
            "an unknown layout is not read"
        );
    }

    #[test]
    fn no_index_without_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        assert!(WalIndex::open(&path).is_none());
    }
}
