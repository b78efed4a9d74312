//! The secrets of the Zscaler-style flows: one-time link tokens, temporary passwords, and the
//! passwords users choose afterwards.
//!
//! Link tokens and temporary passwords are random secrets: they are stored as keyed digests
//! (HMAC) only (docs/security.md#18, #22). Chosen passwords are stored with Argon2id (salted, PHC
//! strings); hashing runs on blocking threads, a few at a time, and an unknown user costs the
//! same as a known one (a dummy hash is checked), so answer times reveal nothing
//! (docs/security.md#26).

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use tokio::sync::Semaphore;

use crate::random::{Random, RandomError};
use crate::session::keys::Key;

/// Random bytes in a link token (docs/security.md#19: at least 128 bits).
pub(crate) const LINK_TOKEN_BYTES: usize = 32;
/// Characters of a temporary password (docs/security.md#22: 12 or more).
pub(crate) const TEMP_PASSWORD_LEN: usize = 16;
/// The temporary-password alphabet: 32 symbols without look-alikes (no 0/o, 1/l).
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Longest password accepted (characters); longer input is refused, never truncated.
pub(crate) const MAX_PASSWORD_CHARS: usize = 256;

/// A new link token: the value for `?t=` (`<key id>.<token>`) and its digest for storage.
pub(crate) fn new_link(key: &Key, random: &dyn Random) -> Result<(String, [u8; 32]), RandomError> {
    let raw: [u8; LINK_TOKEN_BYTES] = crate::random::bytes(random)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let digest = link_digest(key, &token);
    Ok((format!("{}.{token}", key.id), digest))
}

/// The digest a link token is stored under.
pub(crate) fn link_digest(key: &Key, token: &str) -> [u8; 32] {
    key.mac("link", &[token.as_bytes()])
}

/// Splits a `?t=` value into key id and token; `None` for anything malformed.
pub(crate) fn parse_link(value: &str) -> Option<(&str, &str)> {
    let (kid, token) = value.split_once('.')?;
    let ok = token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok && !kid.is_empty() && kid.len() <= 32).then_some((kid, token))
}

/// A new temporary password, grouped for reading: `abcd-efgh-jkmn-pqrs` (80 bits).
pub(crate) fn new_temp_password(random: &dyn Random) -> Result<String, RandomError> {
    let raw: [u8; TEMP_PASSWORD_LEN] = crate::random::bytes(random)?;
    let mut out = String::with_capacity(TEMP_PASSWORD_LEN + 3);
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        // 256 is a multiple of 32: no modulo bias.
        out.push(char::from(ALPHABET[usize::from(b % 32)]));
    }
    Ok(out)
}

/// A typed temporary password as compared: lower case, without the dashes and spaces people
/// add or drop.
pub(crate) fn normalise_temp(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The digest a temporary password is stored under, bound to the address.
pub(crate) fn temp_digest(key: &Key, email: &str, typed: &str) -> [u8; 32] {
    key.mac(
        "temp-password",
        &[email.as_bytes(), normalise_temp(typed).as_bytes()],
    )
}

/// Why a new password was refused (shown to the user, who may try another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PasswordProblem {
    /// Too short.
    #[error("Choose a password of at least {0} characters.")]
    TooShort(usize),
    /// Longer than the maximum.
    #[error("Choose a password of at most 256 characters.")]
    TooLong,
    /// Contains control characters.
    #[error("Use letters, digits, spaces and symbols only.")]
    Control,
    /// On the list of common or breached passwords, or too close to the address.
    #[error("That password is too common or too easy to guess. Choose another.")]
    Common,
    /// The confirmation differs.
    #[error("The two passwords differ.")]
    Mismatch,
    /// The same as the temporary password.
    #[error("Choose a password different from the temporary one.")]
    SameAsTemporary,
}

/// The common and breached passwords: the entries of 8 characters or more of SecLists'
/// `100k-most-used-passwords-NCSC.txt` and `10k-most-common.txt`, lower-cased and sorted
/// (shorter ones are refused by length anyway). A file in the binary rather than a lookup
/// service: no password ever leaves the gateway, and it works offline.
fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("common-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Words people dress up with digits and symbols ("Password1234!", "welcome2024"); the list
/// only holds entries of 8 characters or more, these are shorter.
const BASE_WORDS: &[&str] = &[
    "admin", "changeme", "dragon", "football", "hello", "iloveyou", "letmein", "login", "master",
    "monkey", "pass", "passw0rd", "password", "qwerty", "secret", "shadow", "sunshine", "welcome",
    "abc", "test",
];

/// Keyboard rows and counting, which people walk along ("qwertyuiop[]", "1234567890-=").
const SEQUENCES: &[&str] = &[
    "abcdefghijklmnopqrstuvwxyz",
    "zyxwvutsrqponmlkjihgfedcba",
    "01234567890123456789",
    "98765432109876543210",
    "1234567890-=",
    "qwertyuiop[]",
    "asdfghjkl;'",
    "zxcvbnm,./",
    "1qaz2wsx3edc4rfv5tgb6yhn",
    "qazwsxedcrfvtgbyhnujm",
];

/// Whether a lower-cased password is on the list, or is a listed or base word with digits
/// and symbols around it, or a short pattern repeated, or a walk along a keyboard row.
fn guessable(lower: &str) -> bool {
    let list = common();
    if list.contains(lower) {
        return true;
    }
    let decoration = |c: char| c.is_ascii_digit() || c.is_ascii_punctuation() || c == ' ';
    let base = lower.trim_matches(decoration);
    if base.is_empty() || (base != lower && (list.contains(base) || BASE_WORDS.contains(&base))) {
        return true;
    }
    // Something said twice or more: "aaaaaaaaaaaa", "abcabcabcabc", "monkey monkey".
    let squeezed: Vec<char> = lower.chars().filter(|c| *c != ' ').collect();
    if (1..=squeezed.len() / 2).any(|period| {
        squeezed.len().is_multiple_of(period)
            && squeezed
                .iter()
                .enumerate()
                .all(|(i, c)| *c == squeezed[i % period])
    }) {
        return true;
    }
    // Walks along a row or the alphabet, possibly several of them ("qwertyasdfgh"), also
    // inside decoration ("zxcvbnm,./12").
    let base: String = base.chars().filter(|c| *c != ' ').collect();
    walk(&squeezed.iter().collect::<String>()) || (base.chars().count() >= 6 && walk(&base))
}

/// Whether `s` is made of runs (3 or more characters) of the keyboard and counting sequences.
fn walk(s: &str) -> bool {
    let mut rest = s;
    while !rest.is_empty() {
        let longest = SEQUENCES
            .iter()
            .filter_map(|q| {
                (3..=rest.len())
                    .rev()
                    .find(|n| rest.is_char_boundary(*n) && q.contains(&rest[..*n]))
            })
            .max();
        match longest {
            Some(n) => rest = &rest[n..],
            None => return false,
        }
    }
    true
}

/// docs/security.md#25: at least `min_chars` characters (any printable Unicode, at most 256, never
/// truncated), no composition rules, not on the common/breached list, not the address.
pub(crate) fn check_new_password(
    password: &str,
    confirm: &str,
    email: &str,
    min_chars: usize,
) -> Result<(), PasswordProblem> {
    let chars = password.chars().count();
    if chars < min_chars {
        return Err(PasswordProblem::TooShort(min_chars));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PasswordProblem::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordProblem::Control);
    }
    if password != confirm {
        return Err(PasswordProblem::Mismatch);
    }
    let lower = password.to_lowercase();
    let local = email.split('@').next().unwrap_or(email);
    if guessable(&lower) || lower == email || (local.len() >= 4 && lower.contains(local)) {
        return Err(PasswordProblem::Common);
    }
    Ok(())
}

/// At most this many Argon2 computations run at once; more wait (they are CPU-bound).
fn argon2_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        Semaphore::new(
            std::thread::available_parallelism()
                .map_or(2, std::num::NonZeroUsize::get)
                .max(2),
        )
    })
}

/// Password-hashing failures (internal; the login fails closed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes a chosen password with Argon2id (OWASP parameters, random salt) into a PHC string.
pub(crate) async fn hash(password: String) -> Result<String, HashError> {
    let _slot = argon2_slots()
        .acquire()
        .await
        .map_err(|e| HashError(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    })
    .await
    .map_err(|e| HashError(e.to_string()))?
}

/// The hash checked for people without a password, so that they take as long as people with one.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"otpgate: nobody has this password")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Checks `password` against a stored PHC string, or against a dummy when there is none (the
/// answer is then always false, after the same work).
pub(crate) async fn verify(password: String, stored: Option<String>) -> bool {
    let Ok(_slot) = argon2_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let real = stored.is_some();
        let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = PasswordHash::new(&phc).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        ok && real
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;
    use crate::session::KeyRing;

    fn key() -> KeyRing {
        KeyRing::from_secrets(&[("k1", [4; 32])]).unwrap()
    }

    #[test]
    fn sec_19_link_tokens_carry_256_random_bits_and_are_stored_as_digests() {
        let k = key();
        let r = SystemRandom::default();
        let (param, digest) = new_link(k.current(), &r).unwrap();
        let (kid, token) = parse_link(&param).unwrap();
        assert_eq!(kid, "k1");
        assert_eq!(token.len(), 43, "32 bytes in base64url");
        assert_eq!(link_digest(k.current(), token), digest);
        assert!(!param.contains(&crate::random::hex(&digest)));
        let (other, _) = new_link(k.current(), &r).unwrap();
        assert_ne!(param, other);
        for bad in [
            "",
            "k1",
            "k1.short",
            ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
        ] {
            assert!(parse_link(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sec_22_temporary_passwords_are_long_random_and_stored_as_digests() {
        let r = SystemRandom::default();
        let p = new_temp_password(&r).unwrap();
        assert_eq!(p.len(), 19);
        assert_eq!(
            normalise_temp(&p).len(),
            16,
            "16 symbols of a 32-symbol alphabet: 80 bits"
        );
        assert!(normalise_temp(&p).bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(p, new_temp_password(&r).unwrap());
        let k = key();
        let d = temp_digest(k.current(), "a@b.example", &p);
        // People type it without dashes, in capitals, with spaces: the same password.
        let sloppy = normalise_temp(&p)
            .to_uppercase()
            .chars()
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(temp_digest(k.current(), "a@b.example", &sloppy), d);
        assert_ne!(
            temp_digest(k.current(), "c@b.example", &p),
            d,
            "bound to the address"
        );
    }

    #[test]
    fn sec_25_new_password_rules() {
        let ok = |p: &str| check_new_password(p, p, "alice@corp.example", 12);
        assert_eq!(ok("short pw"), Err(PasswordProblem::TooShort(12)));
        assert_eq!(ok("correct horse battery staple"), Ok(()));
        assert_eq!(ok("ünïcödé pässwörd ✓"), Ok(()), "any printable Unicode");
        assert_eq!(
            ok(&"x".repeat(64).replace('x', "ab")),
            Err(PasswordProblem::Common),
            "two symbols repeated"
        );
        for guessable in [
            "Password1234",
            "password1234!",
            "Welcome2024!!",
            "!!letmein!!!",
            "123456789012",
            "qwertyuiop[]",
            "qwertyasdfgh",
            "abcabcabcabc",
            "zxcvbnm,./12",
            "monkey monkey",
        ] {
            assert_eq!(ok(guessable), Err(PasswordProblem::Common), "{guessable}");
        }
        for fine in [
            "purple monkey dishwasher",
            "Tr0ub4dor&3 horse",
            "zebra quartz 1987",
        ] {
            assert_eq!(ok(fine), Ok(()), "{fine}");
        }
        let long: String = (0u32..256)
            .map(|i| char::from(b'a' + u8::try_from((i * 7 + i * i / 3) % 26).unwrap()))
            .collect();
        assert_eq!(
            ok(&long),
            Ok(()),
            "256 characters are fine and never truncated"
        );
        assert_eq!(ok(&format!("{long}a")), Err(PasswordProblem::TooLong));
        assert_eq!(ok("no\u{7}controls here"), Err(PasswordProblem::Control));
        assert_eq!(ok("alice@corp.example"), Err(PasswordProblem::Common));
        assert_eq!(
            ok("my alice password"),
            Err(PasswordProblem::Common),
            "contains the address's name"
        );
        assert_eq!(ok("aaaaaaaaaaaaaaaa"), Err(PasswordProblem::Common));
        assert_eq!(
            check_new_password(
                "correct horse battery",
                "correct horse batteryX",
                "a@b.example",
                12
            ),
            Err(PasswordProblem::Mismatch)
        );
        // No composition rules: lower-case letters and spaces only is fine.
        assert_eq!(ok("plain lower case words"), Ok(()));
    }

    #[test]
    fn sec_25_breached_passwords_are_refused() {
        let list = common();
        assert!(list.len() > 1_000, "{}", list.len());
        let sample = list.iter().find(|p| p.chars().count() >= 8).unwrap();
        assert_eq!(
            check_new_password(sample, sample, "a@b.example", 8),
            Err(PasswordProblem::Common)
        );
        let upper = sample.to_uppercase();
        assert_eq!(
            check_new_password(&upper, &upper, "a@b.example", 8),
            Err(PasswordProblem::Common),
            "case-insensitive"
        );
    }

    #[tokio::test]
    async fn argon2id_round_trip_and_unknown_users_never_pass() {
        let h = hash("correct horse battery staple".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery staple".into(), Some(h.clone())).await);
        assert!(!verify("correct horse battery stapl".into(), Some(h.clone())).await);
        assert!(
            !verify("otpgate: nobody has this password".into(), None).await,
            "the dummy never passes"
        );
        assert_ne!(
            hash("correct horse battery staple".into()).await.unwrap(),
            h,
            "salted"
        );
    }
}
