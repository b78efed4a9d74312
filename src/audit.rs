//! The audit log: one JSON object per line (docs/product.md#s7), to a file (appended) or stdout.
//!
//! Every event carries time, event name, app, normalised address, client address and a
//! request id; secrets (PINs, tokens, passwords, cookie values) are never written
//! (docs/security.md#38). Lines are written with a single `write` on a file opened for append, so
//! several processes (the gateway and the command line) can share one log.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::AuditSink;

/// Audit failures at open time.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    File { path: PathBuf, file: std::fs::File },
}

/// The audit log.
#[derive(Debug, Clone)]
pub struct Audit {
    sink: Arc<Sink>,
}

/// One audit event.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    /// The event name (`session.issued`, `cookie.minted`, ...).
    pub name: &'a str,
    /// The app concerned.
    pub app: Option<&'a str>,
    /// The normalised address concerned.
    pub email: Option<&'a str>,
    /// The client address.
    pub ip: Option<IpAddr>,
    /// Correlates with access-log lines.
    pub request_id: Option<&'a str>,
    /// More fields (never secrets).
    pub detail: Map<String, Value>,
}

impl<'a> Event<'a> {
    /// A named event.
    pub fn new(name: &'a str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }
    /// Sets the app.
    pub fn app(mut self, app: &'a str) -> Self {
        self.app = Some(app);
        self
    }
    /// Sets the address.
    pub fn email(mut self, email: &'a str) -> Self {
        self.email = Some(email);
        self
    }
    /// Sets the client address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
    /// Sets the request id.
    pub fn request(mut self, id: &'a str) -> Self {
        self.request_id = Some(id);
        self
    }
    /// Adds a field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_owned(), value.into());
        self
    }
}

impl Audit {
    /// Opens the configured sink (creating the file and its folder).
    pub fn open(sink: &AuditSink) -> Result<Self, AuditError> {
        let sink = match sink {
            AuditSink::Stdout => Sink::Stdout,
            AuditSink::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| AuditError {
                        path: path.clone(),
                        source,
                    })?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AuditError {
                        path: path.clone(),
                        source,
                    })?;
                Sink::File {
                    path: path.clone(),
                    file,
                }
            }
        };
        Ok(Self {
            sink: Arc::new(sink),
        })
    }

    /// Writes one event at `now` (since the Unix epoch).
    pub fn record(&self, now: Duration, e: Event<'_>) {
        let mut obj = Map::new();
        obj.insert("time".into(), Value::String(rfc3339(now)));
        obj.insert("event".into(), Value::String(e.name.to_owned()));
        obj.insert(
            "app".into(),
            e.app.map_or(Value::Null, |a| Value::String(a.to_owned())),
        );
        obj.insert(
            "email".into(),
            e.email.map_or(Value::Null, |a| Value::String(a.to_owned())),
        );
        obj.insert(
            "ip".into(),
            e.ip.map_or(Value::Null, |a| Value::String(a.to_string())),
        );
        obj.insert(
            "request_id".into(),
            e.request_id
                .map_or(Value::Null, |a| Value::String(a.to_owned())),
        );
        for (k, v) in e.detail {
            obj.entry(k).or_insert(v);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let result = match self.sink.as_ref() {
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::File { file, .. } => (&*file).write_all(line.as_bytes()),
        };
        if let Err(err) = result {
            ::metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES).increment(1);
            let path = match self.sink.as_ref() {
                Sink::File { path, .. } => path.display().to_string(),
                Sink::Stdout => "stdout".to_owned(),
            };
            tracing::error!(%path, error = %err, event = e.name, "cannot write the audit log");
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(now: Duration) -> String {
    let nanos = i128::try_from(now.as_nanos()).unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos % 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_with_the_common_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.log");
        let a = Audit::open(&AuditSink::File(path.clone())).unwrap();
        a.record(
            Duration::from_millis(1_800_000_000_123),
            Event::new("cookie.minted")
                .app("wiki")
                .email("a@b.example")
                .request("r1")
                .with("ttl_secs", 60),
        );
        a.record(
            Duration::from_secs(1),
            Event::new("session.revoked").ip("192.0.2.1".parse().unwrap()),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "cookie.minted");
        assert_eq!(lines[0]["time"], "2027-01-15T08:00:00.123Z");
        assert_eq!(lines[0]["app"], "wiki");
        assert_eq!(lines[0]["email"], "a@b.example");
        assert_eq!(lines[0]["request_id"], "r1");
        assert_eq!(lines[0]["ttl_secs"], 60);
        assert_eq!(lines[1]["ip"], "192.0.2.1");
        assert_eq!(lines[1]["app"], serde_json::Value::Null);
    }
}
