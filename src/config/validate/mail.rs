//! `mail`: the sender address and how mail leaves (an outbox folder or an SMTP relay URL).

use std::net::IpAddr;
use std::path::Path;

use super::super::{MailConfig, MailTransport, SmtpTls};
use super::{Ctx, file};
use crate::email::Email;

pub(super) fn mail(c: &mut Ctx<'_>, m: file::MailFile, data_dir: &Path) -> MailConfig {
    let transport = match m.transport.as_deref() {
        None | Some("outbox") => MailTransport::Outbox(data_dir.join("outbox")),
        Some(url) => {
            smtp_transport(c, url).unwrap_or_else(|| MailTransport::Outbox(data_dir.join("outbox")))
        }
    };
    let from = match m.from {
        Some(f) => {
            if let Err(e) = check_mailbox(&f) {
                c.err("mail.from", e);
            }
            f
        }
        None => {
            if matches!(transport, MailTransport::Smtp { .. }) {
                c.err("mail.from", "required with an SMTP transport");
            }
            "otpgate <no-reply@otpgate.localhost>".into()
        }
    };
    let password = c.secret(
        "mail",
        m.password_file.as_deref(),
        m.password.as_deref(),
        "password_file",
        "password",
    );
    if password.is_some()
        && !matches!(
            &transport,
            MailTransport::Smtp {
                username: Some(_),
                ..
            }
        )
    {
        c.err(
            "mail.password_file",
            "a password needs an SMTP transport with a user name (smtp://USER@host)",
        );
    }
    let queue_size = m.queue_size.unwrap_or(10_000);
    if queue_size == 0 {
        c.err("mail.queue_size", "must be at least 1");
    }
    MailConfig {
        from,
        transport,
        password,
        queue_size,
    }
}

fn smtp_transport(c: &mut Ctx<'_>, text: &str) -> Option<MailTransport> {
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            c.err(
                "mail.transport",
                format!("expected outbox, smtp://... or smtps://...: {e}"),
            );
            return None;
        }
    };
    let implicit = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        other => {
            c.err(
                "mail.transport",
                format!("expected outbox, smtp://... or smtps://..., found scheme {other:?}"),
            );
            return None;
        }
    };
    if url.password().is_some() {
        c.err(
            "mail.transport",
            "do not put the password in the URL; use mail.password_file",
        );
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => {
            c.err("mail.transport", "missing relay host");
            return None;
        }
    };
    if !(url.path().is_empty() || url.path() == "/") || url.fragment().is_some() {
        c.err(
            "mail.transport",
            "expected smtp://[USER@]HOST[:PORT][?tls=...] without a path",
        );
    }
    let mut tls = if implicit {
        SmtpTls::Implicit
    } else {
        SmtpTls::StartTls
    };
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref(), implicit) {
            ("tls", "required", false) => tls = SmtpTls::StartTls,
            ("tls", "opportunistic", false) => tls = SmtpTls::Opportunistic,
            ("tls", "none", false) => tls = SmtpTls::None,
            _ => c.err(
                "mail.transport",
                format!("unknown option {k}={v} (smtp:// takes tls=required|opportunistic|none)"),
            ),
        }
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    if matches!(tls, SmtpTls::None | SmtpTls::Opportunistic) && !loopback {
        c.warn(
            "mail.transport",
            "mail to a remote relay without required TLS can be read or changed on the way",
        );
    }
    let username = if url.username().is_empty() {
        None
    } else {
        Some(percent_decode(url.username()))
    };
    Some(MailTransport::Smtp {
        host,
        port: url.port().unwrap_or(if implicit { 465 } else { 587 }),
        username,
        tls,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `Name <addr@example.org>` or a bare address; the name may not carry header syntax.
fn check_mailbox(text: &str) -> Result<(), String> {
    let addr = match text.rsplit_once('<') {
        Some((name, rest)) => {
            let Some(addr) = rest.strip_suffix('>') else {
                return Err(format!("expected \"Name <address>\", found {text:?}"));
            };
            if name
                .chars()
                .any(|ch| ch.is_control() || matches!(ch, '<' | '>' | '"' | '\\'))
            {
                return Err("the display name may not contain control characters, quotes, backslashes or <>".into());
            }
            addr
        }
        None => text,
    };
    Email::parse(addr)
        .map(|_| ())
        .map_err(|e| format!("invalid sender address {addr:?}: {e}"))
}
