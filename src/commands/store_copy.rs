//! `otpgate store copy --from SIDE --to SIDE [--force]`: moves every durable record between
//! the embedded store and PostgreSQL (docs/architecture.md, the store room). A side is
//! `embedded` (SQLite in the config's `data_dir`, or `--data-dir`) or a `postgres://` URL; the
//! password of a PostgreSQL side comes from `--from-password-file` / `--to-password-file`, or,
//! when the URL is the config's own `credentials` URL, from its `password_file`.

use std::path::Path;

use super::CommandError;
use crate::config::{Config, CredentialsConfig, Secret, postgres_config};
use crate::store::Store;
use crate::store::copy::{CopyError, copy};

/// The embedded store's file in its folder.
const EMBEDDED_FILE: &str = "otpgate.db";

/// One side of a copy, as given on the command line.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// `embedded` or a `postgres://` URL.
    pub store: &'a str,
    /// A file holding the PostgreSQL password.
    pub password_file: Option<&'a Path>,
}

/// Copies every record from one store into the other; prints the counts per kind.
pub async fn store_copy(
    config: &Config,
    from: Side<'_>,
    to: Side<'_>,
    data_dir: Option<&Path>,
    force: bool,
) -> Result<String, CommandError> {
    if from.store == "embedded" {
        // Opening would create an empty store: copying nothing is a mistake, not a success.
        let dir = data_dir.unwrap_or(&config.data_dir);
        if !dir.join(EMBEDDED_FILE).exists() {
            return Err(CommandError::Refused(format!(
                "no embedded store in {} (give --data-dir)",
                dir.display()
            )));
        }
    }
    let source = open(config, from, data_dir).await?;
    let target = open(config, to, data_dir).await?;
    let counts = copy(&source, &target, force).await.map_err(|e| match e {
        CopyError::Store(s) => CommandError::Store(s),
        other => CommandError::Refused(other.to_string()),
    })?;
    Ok(format!(
        "copied from {} to {}:\n{counts}",
        source.describe(),
        target.describe()
    ))
}

async fn open(
    config: &Config,
    side: Side<'_>,
    data_dir: Option<&Path>,
) -> Result<Store, CommandError> {
    if side.store == "embedded" {
        if side.password_file.is_some() {
            return Err(CommandError::Refused(
                "a password file is for a postgres:// side, not embedded".into(),
            ));
        }
        let dir = data_dir.unwrap_or(&config.data_dir).to_path_buf();
        return Ok(Store::open(&CredentialsConfig::Embedded, &dir).await?);
    }
    let password = match side.password_file {
        Some(file) => Some(read_password(file)?),
        // The config's own database: its password_file.
        None => match &config.credentials {
            CredentialsConfig::Postgres(p) if p.url == side.store => p.password.clone(),
            _ => None,
        },
    };
    let pg = postgres_config(side.store, password, Path::new("."))
        .map_err(|e| CommandError::Refused(format!("{}: {e}", side.store)))?;
    Ok(Store::open(&CredentialsConfig::Postgres(pg), &config.data_dir).await?)
}

fn read_password(file: &Path) -> Result<Secret, CommandError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CommandError::Refused(format!("cannot read {}: {e}", file.display())))?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(CommandError::Refused(format!(
            "{} is empty",
            file.display()
        )));
    }
    Ok(Secret::new(value))
}
