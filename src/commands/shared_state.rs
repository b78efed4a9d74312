//! What the commands reach in the shared state. With `state: memory` the limits and bans live
//! inside each running gateway, out of a command's reach; on Redis a command sees what every
//! replica sees: it clears an address's bans and budgets (`users unlock`), shows a password
//! ban (`users list`) and pushes a revocation to every replica at once (`sessions revoke`).

use crate::email::Email;
use crate::state::State;
use crate::store::Revocation;

use super::CommandError;

/// The configured state when other processes share it, else `None`.
pub(super) fn open(config: &crate::config::Config) -> Result<Option<State>, CommandError> {
    let state = State::open(&config.state, crate::clock::system())?;
    Ok(state.is_shared().then_some(state))
}

/// Removes the address's password ban, device failure budgets and mail budgets; how many keys.
pub(super) async fn clear_account(state: &State, address: &str) -> Result<u64, CommandError> {
    let Ok(email) = Email::parse(address) else {
        return Ok(0);
    };
    let (exact, prefixes) = crate::login::unlock_keys(&email);
    let mut cleared = 0;
    for k in &exact {
        if state.get(k).await?.is_some() {
            cleared += 1;
        }
        state.delete(k).await?;
    }
    for p in &prefixes {
        cleared += state.delete_prefixed(p).await?;
    }
    Ok(cleared)
}

/// Whether the address is under a password ban now.
pub(super) async fn banned(state: &State, address: &str) -> Result<bool, CommandError> {
    let Ok(email) = Email::parse(address) else {
        return Ok(false);
    };
    Ok(state.get(&crate::login::ban_key(&email)).await?.is_some())
}

/// Pushes revocations just stored to every running replica.
pub(super) async fn announce(state: Option<&State>, rows: &[Revocation]) {
    if let Some(state) = state {
        crate::session::revocation::announce(state, rows).await;
    }
}
