//! Ending sessions from a login flow (a sign-out, the portal's sign-out, a new password): one
//! order for every kind of revocation, so no flow forgets a step.

use super::{Flow, LoginError};
use crate::session;
use crate::store::{Revocation, RevocationKind};

impl Flow<'_> {
    /// Stores the revocation (durable, and read by every replica at its next poll), applies it
    /// here at once, then pushes it to the other replicas so they need not wait for the poll.
    pub(super) async fn revoke(
        &self,
        kind: RevocationKind,
        subject: String,
        not_before_ms: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), LoginError> {
        self.svc
            .store
            .revoke(kind, &subject, not_before_ms, expires_ms, now_ms)
            .await?;
        // Sequence 0: what this process applies must not move its place in the store's poll.
        let row = [Revocation {
            seq: 0,
            kind,
            subject,
            not_before_ms,
            expires_ms,
        }];
        self.svc.sessions.revocations().apply(&row);
        session::revocation::announce(self.svc.state, &row).await;
        Ok(())
    }
}
