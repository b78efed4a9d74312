//! Durations (`10m`, `1h30m`), sizes (`64KiB`) and rates (`3/15m`) as written in the config file.
//!
//! Hand-written rather than taken from a crate on purpose: the accepted grammar is deliberately
//! tiny and strict (integer amounts, fixed unit suffixes, no spaces or words), so a typo in a
//! security bound is an error instead of a surprising value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `90s`, `10m`, `1h30m`, `24h`, `7d`, `250ms`. Zero is allowed (`0s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a whole number with a unit, like 30s, 10m, 24h or 1h30m"
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let bytes = s.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i || i - start > 12 {
            return Err(bad());
        }
        let amount: u64 = s[start..i].parse().map_err(|_| bad())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let millis_per = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total = amount
            .checked_mul(millis_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Writes a duration the way the config accepts it (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Parses a byte size: `65536`, `64KiB`, `10MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?}: use bytes or a unit, like 65536, 64KiB or 10MiB");
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 15 {
        return Err(bad());
    }
    let amount: u64 = s[..digits].parse().map_err(|_| bad())?;
    let factor: u64 = match &s[digits..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    amount.checked_mul(factor).ok_or_else(bad)
}

/// `count` events per `per`, e.g. `3/15m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events the window admits.
    pub count: u32,
    /// The window.
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.per))
    }
}

/// Parses `3/15m`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || format!("invalid rate {text:?}: use COUNT/DURATION, like 3/15m");
    let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = parse_duration(per)?;
    if count == 0 || per.is_zero() {
        return Err(format!(
            "invalid rate {text:?}: count and window must be above zero"
        ));
    }
    Ok(Rate { count, per })
}

// === serde adapters (used with #[serde(deserialize_with = ...)]) ===

struct TextVisitor(&'static str);

impl Visitor<'_> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// Deserialises an optional duration string.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = de::Deserialize::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(de::Error::custom))
        .transpose()
}

/// Deserialises an optional size (a number of bytes or a string with a unit).
pub fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like 65536, 64KiB or 10MiB")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            let text = d.deserialize_any(TextVisitor("a size like 65536, 64KiB or 10MiB"))?;
            parse_size(&text).map(Some).map_err(de::Error::custom)
        }
    }
    d.deserialize_option(Opt)
}

/// Deserialises an optional rate string.
pub fn de_opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let text: Option<String> = de::Deserialize::deserialize(d)?;
    text.map(|t| parse_rate(&t).map_err(de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in [
            "",
            "10",
            "m",
            "10 m",
            "-5s",
            "1.5h",
            "10min",
            "5w",
            "99999999999999999h",
            "h10",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_round_trip() {
        for text in ["10m", "1h30m", "24h", "250ms", "1d2h3m4s5ms", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "10 MiB",
            "10mib",
            "999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("3/15m"),
            Ok(Rate {
                count: 3,
                per: Duration::from_secs(900)
            })
        );
        assert_eq!(parse_rate("3/15m").unwrap().to_string(), "3/15m");
        for bad in ["3", "0/15m", "3/0s", "x/15m", "3/15"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
