//! `otpgate service-token create` / `rotate` and `otpgate policy explain --service-token`.

use std::net::IpAddr;
use std::time::Duration;

use super::{CommandError, app, steps_text, verdict};
use crate::audit::{Audit, Event};
use crate::clock::Clock;
use crate::config::{Config, ServiceTokenSettings};
use crate::policy;
use crate::random::Random;
use crate::session::service_token;

/// `otpgate service-token create NAME [--expires 90d]`: a new client id and secret, printed
/// once as the two request headers, then the list item to paste under `service_tokens:`,
/// which holds only the secret's keyed hash (audited, without the secret).
pub fn service_token_create(
    config: &Config,
    name: &str,
    expires: Option<Duration>,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(CommandError::Refused(
            "the name must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    let settings = &config.service_tokens;
    if settings.tokens.iter().any(|t| t.name == name) {
        return Err(CommandError::Refused(format!(
            "a service token named {name:?} exists already; to rotate its secret, create one under a new name and move its secret_hash over (see the README)"
        )));
    }
    if expires.is_some_and(|e| e.is_zero()) {
        return Err(CommandError::Refused("--expires must be above 0s".into()));
    }
    let created = service_token::create(&settings.key_file, random)?;
    let expires_at = expires.map(|e| crate::audit::rfc3339(clock.now() + e));
    let audit = Audit::open(&config.audit)?;
    let mut event = Event::new("service_token.created")
        .with("token", name)
        .with("client_id", created.client_id.as_str())
        .with("via", "command line");
    if let Some(e) = &expires_at {
        event = event.with("expires", e.as_str());
    }
    audit.record(clock.now(), event);

    let mut out = credentials(settings, &created);
    out.push_str(&format!(
        "# The secret is shown only now; the gateway keeps its keyed hash, made with the key in\n\
         # {} (copy that file to every replica). Paste under service_tokens: and reload.\n",
        settings.key_file.display()
    ));
    out.push_str(&format!(
        "  - name: {name}\n    client_id: {}\n    secret_hash: {}\n",
        created.client_id, created.secret_hash
    ));
    if let Some(e) = expires_at {
        out.push_str(&format!("    expires: \"{e}\"\n"));
    }
    Ok(out)
}

/// `otpgate service-token rotate NAME`: a new secret for the token's client id, printed once,
/// then the entry with both the new and the old secret's hashes, valid together until the
/// old one is removed.
pub fn service_token_rotate(
    config: &Config,
    name: &str,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let settings = &config.service_tokens;
    let Some(token) = settings.tokens.iter().find(|t| t.name == name) else {
        return Err(CommandError::Refused(format!(
            "no service token named {name:?}"
        )));
    };
    let [old] = token.secrets.as_slice() else {
        return Err(CommandError::Refused(format!(
            "{name:?} has two valid secrets already: finish that rotation first (remove the old hash and reload)"
        )));
    };
    let (created, old_hash) =
        service_token::rotate(&settings.key_file, &token.client_id, old, random)?;
    Audit::open(&config.audit)?.record(
        clock.now(),
        Event::new("service_token.rotated")
            .with("token", name)
            .with("client_id", created.client_id.as_str())
            .with("via", "command line"),
    );
    let mut out = credentials(settings, &created);
    out.push_str(
        "# Replace the entry with this one and reload: both secrets work until you remove\n\
         # previous_secret_hash (and reload) once every client uses the new secret.\n",
    );
    out.push_str(&format!(
        "  - name: {name}\n    client_id: {}\n    secret_hash: {}\n    previous_secret_hash: {old_hash}\n",
        created.client_id, created.secret_hash
    ));
    if let Some(e) = token.expires {
        out.push_str(&format!("    expires: \"{}\"\n", crate::audit::rfc3339(e)));
    }
    Ok(out)
}

/// The two header lines, shown once.
fn credentials(settings: &ServiceTokenSettings, created: &service_token::Created) -> String {
    format!(
        "{}: {}\n{}: {}\n\n",
        display_name(settings.client_id_header.as_str()),
        created.client_id,
        display_name(settings.client_secret_header.as_str()),
        created.secret.expose(),
    )
}

/// `Otpgate-Client-Id` from `otpgate-client-id`: how people write header names.
fn display_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `otpgate policy explain --service-token NAME`: which policy decides a request presenting
/// that (valid) token, and why.
pub fn policy_explain_service(
    config: &Config,
    app_name: &str,
    token: &str,
    path: &str,
    ip: IpAddr,
) -> Result<String, CommandError> {
    let a = app(config, app_name)?;
    if !config.service_tokens.tokens.iter().any(|t| t.name == token) {
        return Err(CommandError::Refused(format!(
            "no service token named {token:?}"
        )));
    }
    let path = crate::path::normalise(path)
        .map_err(|e| CommandError::Refused(format!("{path:?}: {e} (the gateway answers 400)")))?;
    let facts = policy::Request { path: &path, ip };
    let mut out = format!(
        "app {:?}; request {path} from {ip} with service token {token} (a service, not a person)\n",
        a.name
    );
    let (decision, steps) = policy::explain_service(&a.policies, &facts, token);
    out.push_str(&steps_text(&steps));
    out.push_str(&format!("decision: {}\n", verdict(decision)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::display_name;

    #[test]
    fn header_names_print_as_people_write_them() {
        assert_eq!(display_name("otpgate-client-id"), "Otpgate-Client-Id");
        assert_eq!(display_name("x-svc"), "X-Svc");
    }
}
