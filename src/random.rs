//! Randomness, injected: production uses the operating system's CSPRNG through ring; tests may
//! substitute a seeded source to make secrets reproducible.

use std::fmt::Debug;
use std::sync::Arc;

use ring::rand::SecureRandom as _;

/// The CSPRNG could not produce bytes (the operation fails closed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// A source of cryptographically secure random bytes.
pub trait Random: Send + Sync + Debug {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's CSPRNG (getrandom), via ring.
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        self.0.fill(buf).map_err(|_| RandomError)
    }
}

/// The source the gateway uses unless a test injects another.
pub fn system() -> Arc<dyn Random> {
    Arc::new(SystemRandom::default())
}

/// `N` random bytes.
pub fn bytes<const N: usize>(r: &dyn Random) -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    r.fill(&mut b)?;
    Ok(b)
}

/// A random identifier for correlating log lines and audit events (not a secret).
pub fn request_id(r: &dyn Random) -> String {
    bytes::<8>(r)
        .map(|b| hex(&b))
        .unwrap_or_else(|_| "0000000000000000".to_owned())
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_differs() {
        let r = SystemRandom::default();
        let a: [u8; 16] = bytes(&r).unwrap();
        let b: [u8; 16] = bytes(&r).unwrap();
        assert_ne!(a, b);
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(request_id(&r).len(), 16);
    }
}
