//! `otpgate store copy`: every durable record from one store into another (embedded to
//! PostgreSQL when moving to several replicas, and back). The target must be empty unless
//! `force`, which replaces its contents; the copy is one transaction on the target, so it is
//! all there or not at all.

use super::{Counts, Store, StoreError};

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds records and `--force` was not given.
    #[error("the target store is not empty ({what}); add --force to replace its contents")]
    NotEmpty {
        /// What it holds, one kind per line.
        what: String,
    },
    /// Source and target are the same store.
    #[error("the source and the target are the same store")]
    Same,
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every record of `from` into `to`; returns the counts copied.
pub async fn copy(from: &Store, to: &Store, force: bool) -> Result<Counts, CopyError> {
    if from.describe() == to.describe() {
        return Err(CopyError::Same);
    }
    let existing = to.counts().await?;
    if !existing.is_empty() && !force {
        return Err(CopyError::NotEmpty {
            what: existing.to_string().replace('\n', ", "),
        });
    }
    let dump = from.dump().await?;
    to.restore(&dump).await?;
    Ok(dump.counts())
}
