//! Every durable record as plain rows, the same for both backends: what `store copy` reads from
//! one store and writes whole into the other. Rows carry every column (use times, lock state,
//! sequence numbers), so a copy is the same data, not a fresh start.

use std::fmt;

use crate::users::DirectorySnapshot;

/// A password users chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordRow {
    /// The address.
    pub email: String,
    /// Argon2id PHC string.
    pub hash: String,
    /// When it was set (Unix ms).
    pub changed_ms: u64,
}

/// A temporary password, with its use time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempPasswordRow {
    /// The address.
    pub email: String,
    /// Keyed digest.
    pub digest: Vec<u8>,
    /// Key of the digest.
    pub kid: String,
    /// Issued (Unix ms).
    pub issued_ms: u64,
    /// Stops working (Unix ms).
    pub expires_ms: u64,
    /// When it was used.
    pub used_ms: Option<u64>,
}

/// A one-time link, with its use time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRow {
    /// Keyed digest of the token.
    pub digest: Vec<u8>,
    /// Who it logs in.
    pub email: String,
    /// The app.
    pub app: String,
    /// The return target.
    pub rd: String,
    /// Issued (Unix ms).
    pub issued_ms: u64,
    /// Stops working (Unix ms).
    pub expires_ms: u64,
    /// When it was used.
    pub used_ms: Option<u64>,
}

/// A revocation with its sequence number and kind as stored (text, so a kind this build does
/// not know is still copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRow {
    /// Sequence number (kept, so replicas' positions stay meaningful).
    pub seq: i64,
    /// Kind, as stored.
    pub kind: String,
    /// Session id or address.
    pub subject: String,
    /// Cut-off (Unix ms).
    pub not_before_ms: u64,
    /// Moot after (Unix ms).
    pub expires_ms: u64,
    /// Recorded (Unix ms).
    pub created_ms: u64,
}

/// The failed-login state of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    /// The address.
    pub email: String,
    /// Consecutive failures.
    pub consecutive: i64,
    /// Latest failure (Unix ms).
    pub last_ms: u64,
    /// When the latest lock began.
    pub locked_ms: Option<u64>,
    /// When the latest lock ends.
    pub lock_until_ms: Option<u64>,
    /// Locks since the last success.
    pub locks: i64,
}

/// Every durable record of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Passwords.
    pub passwords: Vec<PasswordRow>,
    /// Temporary passwords.
    pub temp_passwords: Vec<TempPasswordRow>,
    /// One-time links.
    pub links: Vec<LinkRow>,
    /// Revocations, by sequence number.
    pub revocations: Vec<RevocationRow>,
    /// Failure counts and locks.
    pub failures: Vec<FailureRow>,
    /// The last directory snapshot.
    pub directory: Option<DirectorySnapshot>,
}

impl Dump {
    /// How many records of each kind.
    pub fn counts(&self) -> Counts {
        Counts {
            passwords: self.passwords.len(),
            temp_passwords: self.temp_passwords.len(),
            links: self.links.len(),
            revocations: self.revocations.len(),
            failures: self.failures.len(),
            directory_users: self.directory.as_ref().map_or(0, |d| d.users.len()),
            directory_snapshots: usize::from(self.directory.is_some()),
        }
    }
}

/// Records per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passwords.
    pub passwords: usize,
    /// Temporary passwords.
    pub temp_passwords: usize,
    /// One-time links.
    pub links: usize,
    /// Revocations.
    pub revocations: usize,
    /// Accounts with failed logins or locks.
    pub failures: usize,
    /// Users in the directory snapshot.
    pub directory_users: usize,
    /// Directory snapshots (0 or 1).
    pub directory_snapshots: usize,
}

impl Counts {
    /// Whether there is no record at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "passwords            {}", self.passwords)?;
        writeln!(f, "temporary passwords  {}", self.temp_passwords)?;
        writeln!(f, "one-time links       {}", self.links)?;
        writeln!(f, "revocations          {}", self.revocations)?;
        writeln!(f, "failed-login counts  {}", self.failures)?;
        write!(
            f,
            "directory snapshot   {} ({} users)",
            self.directory_snapshots, self.directory_users
        )
    }
}
