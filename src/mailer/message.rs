//! Turning an [`OutgoingMail`] into an RFC 5322 message with lettre's builder.
//!
//! Every header comes from validated input (docs/security.md#9): `From` from the checked
//! `mail.from`, `To` from an [`crate::email::Email`], `Date` from the clock, `Message-ID` from
//! the CSPRNG and the sender's domain. The subject is rendered by the caller; control
//! characters in it are replaced by spaces so it can never end the header, and lettre encodes
//! the rest (RFC 2047). Bodies are UTF-8; lettre picks 7bit, quoted-printable or base64.

use std::time::{Duration, UNIX_EPOCH};

use lettre::Message;
use lettre::address::{Address, AddressError, Envelope};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use super::OutgoingMail;
use crate::random::{self, Random};

/// Why a message could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// `mail.from` is not `Name <address>` or a bare address.
    #[error("invalid sender {text:?}: {source}")]
    From {
        /// The configured text.
        text: String,
        /// What lettre said.
        source: AddressError,
    },
    /// The recipient was refused by lettre (cannot happen for a validated address).
    #[error("invalid recipient: {0}")]
    To(AddressError),
    /// lettre refused to assemble the message.
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// A message ready to send: the envelope and the formatted bytes.
#[derive(Clone)]
pub(crate) struct Built {
    pub(crate) envelope: Envelope,
    pub(crate) bytes: Vec<u8>,
}

/// Parses `mail.from`, which config validation already restricted to a bare address or
/// `Name <address>` with a display name free of control characters, quotes, backslashes and
/// angle brackets. The display name is kept as text; lettre quotes or encodes it on output.
pub(crate) fn parse_from(text: &str) -> Result<Mailbox, MessageError> {
    let err = |source| MessageError::From {
        text: text.to_owned(),
        source,
    };
    let (name, addr) = match text.rsplit_once('<') {
        Some((name, rest)) => {
            let addr = rest
                .strip_suffix('>')
                .ok_or(err(AddressError::InvalidInput))?;
            let name = name.trim();
            if name.chars().any(|c| c.is_control() || "<>\"\\".contains(c)) {
                return Err(err(AddressError::InvalidInput));
            }
            ((!name.is_empty()).then(|| name.to_owned()), addr.trim())
        }
        None => (None, text.trim()),
    };
    let address: Address = addr.parse().map_err(err)?;
    Ok(Mailbox::new(name, address))
}

/// `Auto-Submitted: auto-generated` (RFC 3834): these mails are machine-made, so vacation
/// responders and the like should not answer them.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

/// The subject with every control character (CR, LF, TAB, ...) replaced by a space.
fn clean_subject(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `<32 hex digits@sender domain>`; `None` lets lettre make one if the CSPRNG fails.
fn message_id(from: &Mailbox, random: &dyn Random) -> Option<String> {
    let id = random::bytes::<16>(random).ok()?;
    Some(format!("<{}@{}>", random::hex(&id), from.email.domain()))
}

/// Builds the message: `now` is the `Date` (time since the Unix epoch).
pub(crate) fn build(
    from: &Mailbox,
    mail: &OutgoingMail,
    now: Duration,
    random: &dyn Random,
) -> Result<Built, MessageError> {
    let to: Address = mail.to.as_str().parse().map_err(MessageError::To)?;
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(clean_subject(&mail.subject))
        .date(UNIX_EPOCH + now)
        .message_id(message_id(from, random))
        .header(AutoSubmitted);
    let message = match &mail.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            html.clone(),
        ))?,
        None => builder
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text.clone())?,
    };
    Ok(Built {
        envelope: message.envelope().clone(),
        bytes: message.formatted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::Email;
    use crate::random::SystemRandom;

    fn mail(html: Option<&str>) -> OutgoingMail {
        OutgoingMail {
            to: Email::parse("Alice@Example.ORG").unwrap(),
            subject: "Your sign-in code for Wiki".to_owned(),
            text: "Your code for Wiki:\n\n123456\n\nIt expires in 10 minutes.\n".to_owned(),
            html: html.map(str::to_owned),
            kind: "pin",
            app: "wiki".to_owned(),
        }
    }

    fn built(from: &str, m: &OutgoingMail) -> Built {
        let from = parse_from(from).unwrap();
        build(
            &from,
            m,
            Duration::from_secs(1_700_000_000),
            &SystemRandom::default(),
        )
        .unwrap()
    }

    fn header(p: &mailparse::ParsedMail<'_>, name: &str) -> String {
        use mailparse::MailHeaderMap as _;
        p.headers.get_first_value(name).unwrap_or_default()
    }

    /// The one mailbox of an address header: (display name, address).
    fn mailbox(p: &mailparse::ParsedMail<'_>, name: &str) -> (Option<String>, String) {
        use mailparse::MailHeaderMap as _;
        let h = p.headers.get_first_header(name).unwrap();
        let list = mailparse::addrparse_header(h).unwrap();
        match list.extract_single_info() {
            Some(info) => (info.display_name, info.addr),
            None => panic!("{name}: not a single mailbox"),
        }
    }

    #[test]
    fn plain_text_message_has_every_header() {
        let built = built("Wiki Access <no-reply@corp.example>", &mail(None));
        let p = mailparse::parse_mail(&built.bytes).unwrap();
        assert_eq!(
            mailbox(&p, "From"),
            (
                Some("Wiki Access".to_owned()),
                "no-reply@corp.example".to_owned()
            )
        );
        assert_eq!(mailbox(&p, "To"), (None, "alice@example.org".to_owned()));
        assert_eq!(header(&p, "Subject"), "Your sign-in code for Wiki");
        assert_eq!(header(&p, "Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
        assert_eq!(header(&p, "Auto-Submitted"), "auto-generated");
        let id = header(&p, "Message-ID");
        assert!(
            id.starts_with('<') && id.ends_with("@corp.example>"),
            "{id}"
        );
        assert_eq!(id.len(), "<@corp.example>".len() + 32);
        assert_eq!(p.ctype.mimetype, "text/plain");
        assert_eq!(p.ctype.charset, "utf-8");
        assert!(p.subparts.is_empty());
        let body = p.get_body().unwrap();
        assert!(body.lines().any(|l| l == "123456"), "{body:?}");
        assert_eq!(
            built.envelope.from().map(ToString::to_string).as_deref(),
            Some("no-reply@corp.example")
        );
        let to: Vec<String> = built
            .envelope
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(to, ["alice@example.org"]);
    }

    #[test]
    fn html_makes_multipart_alternative() {
        let built = built(
            "no-reply@corp.example",
            &mail(Some("<p>Your code: <b>123456</b></p>")),
        );
        let p = mailparse::parse_mail(&built.bytes).unwrap();
        assert_eq!(
            mailbox(&p, "From"),
            (None, "no-reply@corp.example".to_owned())
        );
        assert_eq!(p.ctype.mimetype, "multipart/alternative");
        let types: Vec<&str> = p
            .subparts
            .iter()
            .map(|s| s.ctype.mimetype.as_str())
            .collect();
        assert_eq!(types, ["text/plain", "text/html"]);
        assert!(p.subparts[0].get_body().unwrap().contains("123456"));
        assert_eq!(
            p.subparts[1].get_body().unwrap().trim_end(),
            "<p>Your code: <b>123456</b></p>"
        );
    }

    #[test]
    fn utf8_subject_name_and_body_survive() {
        let mut m = mail(Some("<p>Grüße – 123456</p>"));
        m.subject = "Ihr Code für Café Zürich".to_owned();
        m.text = "Grüße aus Zürich\n123456\n".to_owned();
        let built = built("Société Générale <no-reply@corp.example>", &m);
        let p = mailparse::parse_mail(&built.bytes).unwrap();
        assert!(
            built.bytes.is_ascii(),
            "headers and bodies are transfer-encoded"
        );
        assert_eq!(header(&p, "Subject"), "Ihr Code für Café Zürich");
        assert_eq!(
            mailbox(&p, "From"),
            (
                Some("Société Générale".to_owned()),
                "no-reply@corp.example".to_owned()
            )
        );
        assert!(
            p.subparts[0]
                .get_body()
                .unwrap()
                .contains("Grüße aus Zürich")
        );
        assert!(p.subparts[1].get_body().unwrap().contains("Grüße – 123456"));
    }

    #[test]
    fn subject_cannot_inject_headers() {
        let mut m = mail(None);
        m.subject = "Code\r\nBcc: mallory@evil.example\nX-Evil: 1".to_owned();
        let built = built("no-reply@corp.example", &m);
        let p = mailparse::parse_mail(&built.bytes).unwrap();
        use mailparse::MailHeaderMap as _;
        assert!(p.headers.get_first_value("Bcc").is_none());
        assert!(p.headers.get_first_value("X-Evil").is_none());
        assert!(header(&p, "Subject").starts_with("Code  Bcc: mallory@evil.example"));
        assert_eq!(built.envelope.to().len(), 1);
    }

    #[test]
    fn display_names_config_accepts_are_parsed() {
        for (text, name, addr) in [
            ("a@b.example", None, "a@b.example"),
            (
                "otpgate <no-reply@otpgate.localhost>",
                Some("otpgate"),
                "no-reply@otpgate.localhost",
            ),
            (
                "A. Person (IT) <it@b.example>",
                Some("A. Person (IT)"),
                "it@b.example",
            ),
            ("  <it@b.example>", None, "it@b.example"),
        ] {
            let m = parse_from(text).unwrap();
            assert_eq!(m.name.as_deref(), name, "{text}");
            assert_eq!(m.email.to_string(), addr, "{text}");
        }
        for bad in [
            "",
            "Name <a@b.example",
            "Na\"me <a@b.example>",
            "not an address",
        ] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_ids_differ() {
        let from = parse_from("a@b.example").unwrap();
        let r = SystemRandom::default();
        assert_ne!(message_id(&from, &r), message_id(&from, &r));
    }
}
