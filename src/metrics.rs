//! Prometheus metrics: names, the process-wide recorder, and per-app handles cached so the
//! request path only does atomic adds (no label hashing per request).

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
/// Config reloads, by result.
pub const CONFIG_RELOADS: &str = "otpgate_config_reloads_total";
/// Open client connections, by listener.
pub const CONNECTIONS: &str = "otpgate_open_connections";
/// TLS handshakes that failed or timed out.
pub const TLS_FAILURES: &str = "otpgate_tls_handshake_failures_total";
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

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle. `None` when
/// another recorder was installed first (metrics are then not exported).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(UPSTREAM_SECONDS.into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "Requests answered, by app and HTTP status.");
    metrics::describe_counter!(
        UNROUTED,
        "Requests whose host matches no app (answered 404/421/400)."
    );
    metrics::describe_histogram!(
        UPSTREAM_SECONDS,
        metrics::Unit::Seconds,
        "Time to the upstream's response head."
    );
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream failures, by app and kind.");
    metrics::describe_counter!(DECISIONS, "Policy decisions, by app and decision.");
    metrics::describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result.");
    metrics::describe_counter!(
        SESSIONS_REJECTED,
        "Session cookies refused, by app and reason."
    );
    metrics::describe_gauge!(CONNECTIONS, "Open client connections, by listener.");
    metrics::describe_counter!(TLS_FAILURES, "TLS handshakes that failed or timed out.");
    metrics::describe_gauge!(
        MAIL_QUEUE_DEPTH,
        "Mails accepted and not yet sent or given up (queued, being sent or waiting to retry)."
    );
    metrics::describe_counter!(
        MAIL_SENT,
        "Mails handed to the relay or the outbox, by kind."
    );
    metrics::describe_counter!(
        MAIL_FAILED,
        "Mails given up after the last attempt or a permanent refusal, by kind."
    );
    metrics::describe_counter!(
        MAIL_RETRIES,
        "Delivery attempts repeated after a temporary failure, by kind."
    );
    metrics::describe_counter!(
        MAIL_DROPPED,
        "Mails refused because the queue was full or the mailer was stopping, by kind."
    );
    crate::directory::describe_metrics();
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
}

const DECISION_NAMES: [&str; 5] = ["bypass", "allow", "block", "login_required", "no_match"];

/// Metric handles of one app.
#[derive(Debug)]
pub struct AppMetrics {
    app: SharedString,
    by_status: Box<[OnceLock<Counter>]>,
    decisions: [Counter; 5],
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
