//! Prometheus metrics: names, the process-wide recorder, and per-app handles cached so the
//! request path only does atomic adds (no label hashing per request).

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// Requests and the gateway.

/// Requests answered, by app and status.
pub const REQUESTS: &str = "otpgate_requests_total";
/// Requests for hosts no app serves.
pub const UNROUTED: &str = "otpgate_unrouted_requests_total";
/// Time to the upstream's response head, by app.
pub const UPSTREAM_SECONDS: &str = "otpgate_upstream_duration_seconds";
/// Upstream failures, by app and kind (connect, timeout).
pub const UPSTREAM_ERRORS: &str = "otpgate_upstream_errors_total";
/// Policy decisions, by app and decision.
pub const DECISIONS: &str = "otpgate_policy_decisions_total";
/// Session cookies refused, by app and reason (invalid, expired, revoked).
pub const SESSIONS_REJECTED: &str = "otpgate_sessions_rejected_total";
/// Service tokens refused, by app and reason (malformed, unknown, wrong_secret, expired).
pub const SERVICE_TOKEN_FAILURES: &str = "otpgate_service_token_failures_total";

// The process: configuration and listeners.

/// Config reloads, by result.
pub const CONFIG_RELOADS: &str = "otpgate_config_reloads_total";
/// Open client connections, by listener.
pub const CONNECTIONS: &str = "otpgate_open_connections";
/// TLS handshakes that failed or timed out.
pub const TLS_FAILURES: &str = "otpgate_tls_handshake_failures_total";

// Login pages.

/// Codes requested, by app and outcome (`sent`, or `suppressed` with a reason).
pub const CODES: &str = "otpgate_codes_total";
/// Login attempts, by app, method and outcome.
pub const LOGINS: &str = "otpgate_logins_total";
/// Single sign-on hand-off codes, by app and outcome (`issued` on the portal; `redeemed` or
/// `refused` on the app).
pub const PORTAL_HANDOFFS: &str = "otpgate_portal_handoffs_total";
/// Links and temporary passwords requested from the login page, by app, method and outcome
/// (`sent`, or `suppressed` with a reason).
pub const AUTH_EMAILS: &str = "otpgate_auth_emails_total";
/// Requests over a rate limit, by limit.
pub const RATE_LIMITED: &str = "otpgate_rate_limited_total";

// The mailer.

/// Mails accepted by the mailer and not yet sent or given up.
pub const MAIL_QUEUE_DEPTH: &str = "otpgate_mail_queue_depth";
/// Mails handed to the relay (or written to the outbox), by kind.
pub const MAIL_SENT: &str = "otpgate_mail_sent_total";
/// Mails given up after the last attempt (or a permanent refusal), by kind.
pub const MAIL_FAILED: &str = "otpgate_mail_failed_total";
/// Delivery attempts repeated after a temporary failure, by kind.
pub const MAIL_RETRIES: &str = "otpgate_mail_retries_total";
/// Mails refused because the queue was full (or the mailer was stopping), by kind.
pub const MAIL_DROPPED: &str = "otpgate_mail_dropped_total";

// Directory sync.

/// Syncs, by result (`success`, `failure`).
pub const DIRECTORY_SYNCS: &str = "otpgate_directory_syncs_total";
/// Users in the snapshot serving now.
pub const DIRECTORY_USERS: &str = "otpgate_directory_users";
/// Distinct groups in the snapshot serving now.
pub const DIRECTORY_GROUPS: &str = "otpgate_directory_groups";
/// Entries the last successful sync skipped, by reason.
pub const DIRECTORY_SKIPPED: &str = "otpgate_directory_skipped_entries";
/// When the snapshot serving now was taken (Unix seconds).
pub const DIRECTORY_LAST_SUCCESS: &str = "otpgate_directory_last_success_timestamp_seconds";
/// How long the last sync took, successful or not.
pub const DIRECTORY_DURATION: &str = "otpgate_directory_sync_duration_seconds";

// The audit log.

/// Failed audit writes (the gateway keeps serving; the failure is logged and counted).
pub const AUDIT_WRITE_FAILURES: &str = "otpgate_audit_write_failures_total";

// Shared state.

/// Calls to the shared state (Redis) that failed or timed out, by operation; logins fail
/// closed while they fail.
pub const STATE_ERRORS: &str = "otpgate_state_errors_total";

// The credentials store.

/// Calls to the credentials store (SQLite or PostgreSQL) that failed or timed out, by
/// operation; logins that need the store fail closed while they fail.
pub const STORE_ERRORS: &str = "otpgate_store_errors_total";

#[derive(Debug, Clone, Copy)]
enum TokenKind {
    Counter,
    Gauge,
    Histogram,
}

/// The `# HELP` (and unit) of one metric.
struct Description {
    name: &'static str,
    kind: TokenKind,
    unit: Option<Unit>,
    help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Description {
    Description {
        name,
        kind: TokenKind::Counter,
        unit: None,
        help,
    }
}

const fn gauge(name: &'static str, unit: Option<Unit>, help: &'static str) -> Description {
    Description {
        name,
        kind: TokenKind::Gauge,
        unit,
        help,
    }
}

/// Every metric the gateway exports; a name missing here has no `# HELP` line.
const DESCRIPTIONS: &[Description] = &[
    counter(REQUESTS, "Requests answered, by app and HTTP status."),
    counter(
        UNROUTED,
        "Requests whose host matches no app (answered 404/421/400).",
    ),
    Description {
        name: UPSTREAM_SECONDS,
        kind: TokenKind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time to the upstream's response head.",
    },
    counter(UPSTREAM_ERRORS, "Upstream failures, by app and kind."),
    counter(DECISIONS, "Policy decisions, by app and decision."),
    counter(
        SESSIONS_REJECTED,
        "Session cookies refused, by app and reason.",
    ),
    counter(
        SERVICE_TOKEN_FAILURES,
        "Service tokens refused (answered 401), by app and reason: malformed, unknown, wrong_secret, expired.",
    ),
    counter(CONFIG_RELOADS, "Configuration reloads, by result."),
    gauge(CONNECTIONS, None, "Open client connections, by listener."),
    counter(TLS_FAILURES, "TLS handshakes that failed or timed out."),
    counter(
        CODES,
        "One-time PINs requested, by app and outcome (sent, or suppressed with a reason).",
    ),
    counter(LOGINS, "Login attempts, by app, method and outcome."),
    counter(
        PORTAL_HANDOFFS,
        "Single sign-on hand-off codes, by app and outcome: issued (portal), redeemed or refused (app).",
    ),
    counter(
        AUTH_EMAILS,
        "One-time links and temporary passwords requested, by app, method and outcome (sent, or suppressed with a reason).",
    ),
    counter(RATE_LIMITED, "Requests over a rate limit, by limit."),
    gauge(
        MAIL_QUEUE_DEPTH,
        None,
        "Mails accepted and not yet sent or given up (queued, being sent or waiting to retry).",
    ),
    counter(
        MAIL_SENT,
        "Mails handed to the relay or the outbox, by kind.",
    ),
    counter(
        MAIL_FAILED,
        "Mails given up after the last attempt or a permanent refusal, by kind.",
    ),
    counter(
        MAIL_RETRIES,
        "Delivery attempts repeated after a temporary failure, by kind.",
    ),
    counter(
        MAIL_DROPPED,
        "Mails refused because the queue was full or the mailer was stopping, by kind.",
    ),
    counter(DIRECTORY_SYNCS, "Directory syncs, by result."),
    gauge(
        DIRECTORY_USERS,
        None,
        "Users in the directory snapshot serving now.",
    ),
    gauge(
        DIRECTORY_GROUPS,
        None,
        "Distinct groups in the directory snapshot serving now.",
    ),
    gauge(
        DIRECTORY_SKIPPED,
        None,
        "Entries the last successful directory sync skipped, by reason.",
    ),
    gauge(
        DIRECTORY_LAST_SUCCESS,
        Some(Unit::Seconds),
        "When the directory snapshot serving now was taken (Unix time).",
    ),
    gauge(
        DIRECTORY_DURATION,
        Some(Unit::Seconds),
        "How long the last directory sync took.",
    ),
    counter(
        AUDIT_WRITE_FAILURES,
        "Audit events that could not be written (the gateway kept serving).",
    ),
    counter(
        STATE_ERRORS,
        "Shared-state (Redis) calls that failed or timed out, by operation (logins fail closed).",
    ),
    counter(
        STORE_ERRORS,
        "Credentials-store calls that failed or timed out, by operation (logins fail closed).",
    ),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle. `None` when
/// another recorder was installed first (metrics are then not exported).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = builder()?.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn builder() -> Option<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_SECONDS.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .ok()
}

/// Describes every metric to the current recorder.
fn describe() {
    metrics::with_recorder(|r| {
        for d in DESCRIPTIONS {
            let (name, help) = (d.name.into(), d.help.into());
            match d.kind {
                TokenKind::Counter => r.describe_counter(name, d.unit, help),
                TokenKind::Gauge => r.describe_gauge(name, d.unit, help),
                TokenKind::Histogram => r.describe_histogram(name, d.unit, help),
            }
        }
    });
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// Drains histogram buckets; called periodically.
pub fn upkeep() {
    if let Some(h) = install() {
        h.run_upkeep();
    }
}

/// Policy decisions as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    /// A bypass policy let the request through.
    Bypass = 0,
    /// An allow policy let the request through.
    Allow,
    /// A block policy refused it.
    Block,
    /// A login was needed.
    LoginRequired,
    /// No policy matched.
    NoMatch,
    /// A service_auth policy let a service token in.
    ServiceAuth,
}

const DECISION_NAMES: [&str; 6] = [
    "bypass",
    "allow",
    "block",
    "login_required",
    "no_match",
    "service_auth",
];

/// Metric handles of one app.
#[derive(Debug)]
pub struct AppMetrics {
    app: SharedString,
    by_status: Box<[OnceLock<Counter>]>,
    decisions: [Counter; 6],
    /// Time to the upstream's response head.
    pub upstream_seconds: Histogram,
    /// Upstream connection failures.
    pub upstream_connect_errors: Counter,
    /// Upstream timeouts.
    pub upstream_timeouts: Counter,
    rejected: [Counter; 3],
}

const REJECT_REASONS: [&str; 3] = ["invalid", "expired", "revoked"];

impl AppMetrics {
    /// Registers the handles of `app`.
    pub fn new(app: &str) -> Arc<Self> {
        let app: SharedString = app.to_owned().into();
        let decisions = DECISION_NAMES
            .map(|d| metrics::counter!(DECISIONS, "app" => app.clone(), "decision" => d));
        Arc::new(Self {
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            decisions,
            upstream_seconds: metrics::histogram!(UPSTREAM_SECONDS, "app" => app.clone()),
            upstream_connect_errors: metrics::counter!(UPSTREAM_ERRORS, "app" => app.clone(), "kind" => "connect"),
            upstream_timeouts: metrics::counter!(UPSTREAM_ERRORS, "app" => app.clone(), "kind" => "timeout"),
            rejected: REJECT_REASONS
                .map(|r| metrics::counter!(SESSIONS_REJECTED, "app" => app.clone(), "reason" => r)),
            app,
        })
    }

    /// Counts one answered request.
    pub fn request(&self, status: http::StatusCode) {
        let code = status.as_u16();
        if let Some(slot) = self.by_status.get(usize::from(code.saturating_sub(100))) {
            slot.get_or_init(|| metrics::counter!(REQUESTS, "app" => self.app.clone(), "status" => code.to_string()))
                .increment(1);
        }
    }

    /// Counts a refused session cookie (`invalid`, `expired` or `revoked`).
    pub fn session_rejected(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejected[i].increment(1);
        }
    }

    /// Counts one policy decision.
    pub fn decision(&self, d: DecisionLabel) {
        self.decisions[d as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every declared metric touched once (as a counter when the table does not know it),
    /// through a recorder of the test's own: the global one belongs to whichever test installs
    /// it first.
    fn rendered() -> String {
        let recorder = builder().expect("valid buckets").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for name in declared() {
                let kind = DESCRIPTIONS
                    .iter()
                    .find(|d| d.name == name)
                    .map_or(TokenKind::Counter, |d| d.kind);
                match kind {
                    TokenKind::Counter => metrics::counter!(name).increment(1),
                    TokenKind::Gauge => metrics::gauge!(name).set(1.0),
                    TokenKind::Histogram => metrics::histogram!(name).record(0.01),
                }
            }
        });
        handle.render()
    }

    /// The metric names this file declares as constants, read from its source so that a
    /// constant left out of the table is noticed.
    fn declared() -> Vec<&'static str> {
        let quote_prefix = concat!("\"", "otpgate_");
        include_str!("metrics.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(quote_prefix))
            .filter_map(|l| l.split('"').nth(1))
            .collect()
    }

    #[test]
    fn every_declared_metric_is_described_once() {
        let declared = declared();
        assert!(declared.len() >= 25, "{declared:?}");
        let described: Vec<&str> = DESCRIPTIONS.iter().map(|d| d.name).collect();
        let unique: BTreeSet<&str> = described.iter().copied().collect();
        assert_eq!(
            unique.len(),
            described.len(),
            "described twice: {described:?}"
        );
        let declared: BTreeSet<&str> = declared.into_iter().collect();
        assert_eq!(declared, unique, "declared vs described");
    }

    #[test]
    fn every_exported_family_has_help() {
        let text = rendered();
        let families: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for d in DESCRIPTIONS {
            assert!(
                families.contains(d.name),
                "{} not rendered:\n{text}",
                d.name
            );
        }
        for family in families.iter().filter(|f| f.starts_with("otpgate_")) {
            let help = format!("# HELP {family} ");
            assert!(
                text.lines().any(|l| l.starts_with(&help)),
                "{family} has no HELP line:\n{text}"
            );
        }
        // Every sample belongs to a family with a TYPE (and so a HELP) line.
        for sample in text.lines().filter(|l| l.starts_with("otpgate_")) {
            let name = sample.split(['{', ' ']).next().unwrap_or(sample);
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| families.contains(b)))
                .unwrap_or(name);
            assert!(families.contains(base), "{sample} has no family:\n{text}");
        }
    }

    /// Metric names are declared here only, so the table above stays complete.
    #[test]
    fn no_metric_name_outside_this_file() {
        fn walk(dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("readable source folder") {
                let path = entry.expect("folder entry").path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("src/metrics.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("readable source");
                    for (n, line) in text.lines().enumerate() {
                        if line.contains(concat!("\"", "otpgate_")) {
                            found.push(format!("{}:{}: {line}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "metric names outside src/metrics.rs:\n{}",
            found.join("\n")
        );
    }
}
