//! Deciding a request that presented a valid service token: the same policies, walked for a
//! service instead of a person (see the module above for which actions apply to whom).

use super::{Decision, Policy, Request, Step, Subject, decide_as, explain_as};

/// Decides a request that presented the valid service token `service` (its name). Only
/// `service_auth`, `bypass` and `block` policies apply; `allow` policies are for people.
pub fn decide_service<'p>(
    policies: &'p [Policy],
    req: &Request<'_>,
    service: &str,
) -> Decision<'p> {
    decide_as(policies, req, Subject::Service(service))
}

/// Like [`super::explain`], for a request presenting the valid service token `service`.
pub fn explain_service<'p>(
    policies: &'p [Policy],
    req: &Request<'_>,
    service: &str,
) -> (Decision<'p>, Vec<Step>) {
    explain_as(policies, req, Subject::Service(service))
}
