//! One-time PINs: decimal digits from the CSPRNG without modulo bias (SECURITY.md 12), stored
//! only as a keyed digest bound to the login transaction and the address (SECURITY.md 15, 18).

use serde::{Deserialize, Serialize};

use crate::random::{Random, RandomError};
use crate::session::KeyRing;
use crate::session::keys::Key;

/// A PIN of `digits` decimal digits (6 to 10), uniformly distributed.
pub fn generate(random: &dyn Random, digits: u32) -> Result<String, RandomError> {
    let space = 10u64.pow(digits.clamp(1, 19));
    // Rejection sampling: values above the largest multiple of `space` would bias low digits.
    let limit = u64::MAX - (u64::MAX % space);
    loop {
        let v = u64::from_be_bytes(crate::random::bytes::<8>(random)?);
        if v < limit {
            return Ok(format!("{:0width$}", v % space, width = digits as usize));
        }
    }
}

/// The digest stored for a PIN: HMAC under the key, over the transaction, address and PIN.
pub fn digest(key: &Key, tx: &[u8; 16], email: &str, pin: &str) -> [u8; 32] {
    key.mac("pin", &[tx, email.as_bytes(), pin.as_bytes()])
}

/// What is filed with a PIN's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The address the PIN went to (the identity it proves).
    pub email: String,
    /// The key that made the digest.
    pub kid: String,
    /// Nothing was mailed (blocked, unknown, throttled or locked): no input can succeed.
    pub decoy: bool,
}

impl Payload {
    /// As stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From storage.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

/// A typed code, cleaned of the spaces people paste; `None` if it cannot be a PIN.
pub fn clean(input: &str, digits: u32) -> Option<String> {
    let c: String = input
        .chars()
        .filter(|ch| !ch.is_whitespace() && *ch != '-')
        .collect();
    (c.len() == digits as usize && c.bytes().all(|b| b.is_ascii_digit())).then_some(c)
}

/// The key a digest was made with (still in the ring), or the current one for a new digest.
pub fn key_for<'k>(keys: &'k KeyRing, kid: Option<&str>) -> Option<&'k Key> {
    match kid {
        Some(id) => keys.get(id),
        None => Some(keys.current()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn sec_12_pins_are_the_configured_number_of_csprng_digits() {
        let r = SystemRandom::default();
        for digits in [6, 8, 10] {
            for _ in 0..200 {
                let p = generate(&r, digits).unwrap();
                assert_eq!(p.len(), digits as usize);
                assert!(p.bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn pins_are_roughly_uniform() {
        // Leading-digit histogram over 20 000 draws: each digit near 2 000 (no bias towards 0).
        let r = SystemRandom::default();
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            let p = generate(&r, 6).unwrap();
            counts[usize::from(p.as_bytes()[0] - b'0')] += 1;
        }
        for c in counts {
            assert!((1_700..2_300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sec_15_digests_bind_transaction_address_and_key() {
        let keys = KeyRing::from_secrets(&[("k1", [1; 32]), ("k2", [2; 32])]).unwrap();
        let k1 = keys.get("k1").unwrap();
        let base = digest(k1, &[1; 16], "a@b.example", "123456");
        assert_ne!(
            base,
            digest(k1, &[2; 16], "a@b.example", "123456"),
            "other browser"
        );
        assert_ne!(
            base,
            digest(k1, &[1; 16], "c@b.example", "123456"),
            "other address"
        );
        assert_ne!(
            base,
            digest(k1, &[1; 16], "a@b.example", "123457"),
            "other PIN"
        );
        assert_ne!(
            base,
            digest(keys.get("k2").unwrap(), &[1; 16], "a@b.example", "123456"),
            "other key"
        );
    }

    #[test]
    fn cleaning_typed_codes() {
        assert_eq!(clean(" 123 456 ", 6).as_deref(), Some("123456"));
        assert_eq!(clean("123-456", 6).as_deref(), Some("123456"));
        assert_eq!(clean("12345", 6), None);
        assert_eq!(clean("12345a", 6), None);
        assert_eq!(clean("１２３４５６", 6), None);
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload {
            email: "a@b.example".into(),
            kid: "k1".into(),
            decoy: false,
        };
        assert_eq!(Payload::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(Payload::from_bytes(b"junk"), None);
    }
}
