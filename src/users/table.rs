//! The user table serving now: the config's users merged with the directory snapshot, rebuilt
//! whenever either changes. Shared by the pipeline (groups for policies), the login pages and
//! the directory sync, which puts new snapshots in service.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use super::{DirectorySnapshot, Users};
use crate::config::UserConfig;

/// The merged user table and the directory snapshot it was built from.
#[derive(Debug)]
pub struct UserTable {
    users: ArcSwap<Users>,
    directory: ArcSwapOption<DirectorySnapshot>,
    /// The config's users and the fingerprint of the directory settings they came with. The
    /// lock also serialises rebuilds, so a reload and a sync finishing together cannot leave a
    /// table built from an outdated half.
    config: Mutex<Source>,
}

#[derive(Debug)]
struct Source {
    users: Vec<UserConfig>,
    fingerprint: Option<String>,
}

impl UserTable {
    /// The table of the config's users alone; `fingerprint` names the directory settings
    /// (`None` without a directory).
    pub fn new(users: &[UserConfig], fingerprint: Option<String>) -> Self {
        Self {
            users: ArcSwap::from_pointee(Users::from_config(users)),
            directory: ArcSwapOption::empty(),
            config: Mutex::new(Source {
                users: users.to_vec(),
                fingerprint,
            }),
        }
    }

    /// The user table serving now.
    pub fn users(&self) -> Guard<Arc<Users>> {
        self.users.load()
    }

    /// The user table serving now, for work that awaits (a guard should not be held across
    /// awaits).
    pub fn users_full(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// The directory snapshot serving now, if any.
    pub fn snapshot(&self) -> Option<Arc<DirectorySnapshot>> {
        self.directory.load_full()
    }

    /// Whether a directory snapshot is in service.
    pub fn has_snapshot(&self) -> bool {
        self.directory.load().is_some()
    }

    /// After a reload: the new config's users and directory fingerprint; the table is rebuilt.
    /// A snapshot taken with other directory settings stops serving.
    pub fn set_config(&self, users: &[UserConfig], fingerprint: Option<String>) {
        let mut source = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        if source.fingerprint != fingerprint {
            self.directory.store(None);
        }
        source.users = users.to_vec();
        source.fingerprint = fingerprint;
        self.rebuild(&source);
    }

    /// Puts a directory snapshot in service (or removes it with `None`) and rebuilds the table;
    /// the next request sees the new groups. A snapshot taken with other directory settings than
    /// the running config's (a sync that finished while a reload changed them) is refused:
    /// returns whether it was taken.
    pub fn set_snapshot(&self, snapshot: Option<Arc<DirectorySnapshot>>) -> bool {
        let source = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = &snapshot
            && source.fingerprint.as_deref() != Some(s.fingerprint.as_str())
        {
            return false;
        }
        self.directory.store(snapshot);
        self.rebuild(&source);
        true
    }

    fn rebuild(&self, source: &Source) {
        let directory = self.directory.load();
        self.users
            .store(Arc::new(Users::merged(&source.users, directory.as_deref())));
    }
}
