//! Keeps grading instances on several hosts from sharing one SQLite data directory.
//!
//! SQLite's WAL keeps its index in shared memory, which processes (and containers) share only
//! through one kernel: instances on two hosts, say over a network filesystem, would each keep
//! their own index and silently lose or corrupt writes. So every instance keeps a lease file in
//! `<data-dir>/instances/` naming its host, rewritten every [`HEARTBEAT`], and an instance that
//! finds a fresh lease of another host refuses to start.
//!
//! Lease files rather than rows in a database: a heartbeat row in `grading.sqlite3` would move its
//! change stamp and empty the JSON cache every few seconds, and a second SQLite file would rely,
//! across hosts, on the very file locking this guard distrusts. Each instance writes only its own
//! file, by rename (atomic on local and network filesystems), and only reads the others'.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::StoreError;

/// How often a running instance renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A lease renewed within this long belongs to a live instance: three missed heartbeats.
pub const LIVE_WINDOW: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());
/// Leases older than this are of crashed instances and are removed at start.
const STALE_AFTER: Duration = Duration::from_secs(3600);
/// Directory of the leases inside the data directory.
const LEASE_DIR: &str = "instances";
const LEASE_SUFFIX: &str = ".lease";
/// Where Linux keeps an id drawn at each boot: the same for every container on one kernel.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What tells hosts apart: processes with the same id share a kernel, and so SQLite's shared memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostId {
    id: String,
    hostname: String,
}

impl HostId {
    /// This machine's kernel boot id, or its hostname where the boot id cannot be read.
    pub fn of_this_host() -> HostId {
        let hostname = hostname();
        let boot_id = std::fs::read_to_string(BOOT_ID)
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        HostId {
            id: boot_id.unwrap_or_else(|| hostname.clone()),
            hostname,
        }
    }

    /// A host id given by the operator or a test (see `--host-id` in [`crate::config`]).
    pub fn named(id: &str) -> HostId {
        HostId {
            id: id.trim().to_owned(),
            hostname: hostname(),
        }
    }

    /// One line per field: what a lease file holds.
    fn to_lease(&self) -> String {
        format!("{}\n{}\n{}\n", self.id, self.hostname, std::process::id())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This instance's lease, renewed on a thread of its own (never an async worker) until dropped,
/// when the lease is removed.
pub struct HostGuard {
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl HostGuard {
    /// Writes this instance's lease in `data_dir`, then refuses (removing it again) if a live
    /// instance of another host holds one. Writing before looking means two instances starting
    /// at once on two hosts cannot both miss each other.
    pub fn claim(data_dir: &Path, host: HostId) -> Result<HostGuard, StoreError> {
        let dir = data_dir.join(LEASE_DIR);
        std::fs::create_dir_all(&dir)?;
        let lease = Lease::new(&dir, &host);
        lease.renew()?;
        if let Some(other) = live_lease_of_another_host(&dir, &lease.path, &host) {
            lease.remove();
            return Err(StoreError::OtherHost(other));
        }
        let (stop, stopped) = mpsc::channel();
        let heartbeat = std::thread::Builder::new()
            .name("grading-host-lease".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                    if let Err(err) = lease.renew() {
                        tracing::warn!(path = %lease.path.display(), %err, "cannot renew this instance's lease");
                    }
                }
                lease.remove();
            })?;
        Ok(HostGuard {
            stop: Some(stop),
            heartbeat: Some(heartbeat),
        })
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once; it removes the lease and ends.
        drop(self.stop.take());
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
    }
}

/// One instance's lease file and what it says.
struct Lease {
    path: PathBuf,
    temp: PathBuf,
    text: String,
}

impl Lease {
    fn new(dir: &Path, host: &HostId) -> Lease {
        // The pid alone may repeat across hosts and restarts; the random part may not.
        let random = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let name = format!("{}-{random:016x}", std::process::id());
        Lease {
            path: dir.join(format!("{name}{LEASE_SUFFIX}")),
            temp: dir.join(format!(".{name}.tmp")),
            text: host.to_lease(),
        }
    }

    /// Writes the lease anew, so its modification time says "alive now".
    fn renew(&self) -> io::Result<()> {
        std::fs::write(&self.temp, &self.text)?;
        std::fs::rename(&self.temp, &self.path)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Describes the first lease in `dir`, other than `own`, renewed within [`LIVE_WINDOW`] by an
/// instance of another host; removes leases of crashed instances on the way. A lease dated in
/// the future (the other host's clock is ahead) counts as live.
fn live_lease_of_another_host(dir: &Path, own: &Path, host: &HostId) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_lease = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(LEASE_SUFFIX));
        if !is_lease || path == own {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or(Duration::ZERO);
        if age > STALE_AFTER {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut fields = text.lines();
        let (id, hostname, pid) = (fields.next(), fields.next(), fields.next());
        if age <= LIVE_WINDOW && id.is_some_and(|id| id != host.id) {
            return Some(format!(
                "host id {}, hostname {}, pid {}, renewed {} s ago",
                id.unwrap_or_default(),
                hostname.unwrap_or("?"),
                pid.unwrap_or("?"),
                age.as_secs()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_of_another_host_is_refused_one_of_the_same_host_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostGuard::claim(dir.path(), HostId::named("host-a")).unwrap();
        let same_host = HostGuard::claim(dir.path(), HostId::named("host-a")).unwrap();

        let refused = HostGuard::claim(dir.path(), HostId::named("host-b"))
            .err()
            .expect("an instance on another host must be refused");
        let message = refused.to_string();
        assert!(message.contains("host id host-a"), "{message}");
        assert!(message.contains("--database-url (PostgreSQL)"), "{message}");

        // Once the first host's instances are gone, the other host may take over.
        drop((first, same_host));
        HostGuard::claim(dir.path(), HostId::named("host-b")).unwrap();
    }

    #[test]
    fn the_default_host_id_is_the_same_for_every_process_of_this_kernel() {
        assert_eq!(HostId::of_this_host(), HostId::of_this_host());
        assert!(!HostId::of_this_host().id.is_empty());
    }
}
