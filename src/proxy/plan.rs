//! What happens to a request's headers on the way upstream, decided once ([`Plan`]) and then
//! either applied to the request's `HeaderMap` (for hyper's client) or written straight into
//! the request head (the direct HTTP/1.1 path), so both paths send the same headers.

use std::borrow::Cow;
use std::ops::Range;

use http::HeaderMap;
use http::header::{COOKIE, HeaderName, HeaderValue, UPGRADE};

use crate::session::CookieEdit;

/// A set of name lengths, one bit each (63 stands for every length from 63 up): a header whose
/// length is not in the set cannot be one of the names, so the exact comparisons are skipped
/// (most of a request's headers are in neither the removals nor the set ones).
#[derive(Debug, Clone, Copy, Default)]
struct Lengths(u64);

impl Lengths {
    fn bit(name: &HeaderName) -> u64 {
        1 << name.as_str().len().min(63)
    }
    fn add(&mut self, name: &HeaderName) {
        self.0 |= Self::bit(name);
    }
    /// False only when no name of this length was added.
    fn may_contain(self, name: &HeaderName) -> bool {
        self.0 & Self::bit(name) != 0
    }
}

/// Names to remove, without a heap allocation in the common case. Names that outlive the
/// plan (configured ones) are borrowed: no reference count to take and give back.
#[derive(Debug)]
pub(super) struct Removals<'a> {
    inline: [Option<Cow<'a, HeaderName>>; 4],
    len: usize,
    spill: Vec<Cow<'a, HeaderName>>,
    lengths: Lengths,
}

impl<'a> Removals<'a> {
    pub(super) fn new() -> Self {
        Self {
            inline: [None, None, None, None],
            len: 0,
            spill: Vec::new(),
            lengths: Lengths::default(),
        }
    }
    pub(super) fn push(&mut self, n: Cow<'a, HeaderName>) {
        self.lengths.add(&n);
        if self.len < self.inline.len() {
            self.inline[self.len] = Some(n);
            self.len += 1;
        } else {
            self.spill.push(n);
        }
    }
    pub(super) fn apply(self, headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
        for n in self.inline.into_iter().flatten().chain(self.spill) {
            if !keep(&n) {
                headers.remove(&*n);
            }
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        if !self.lengths.may_contain(name) {
            return false;
        }
        self.inline[..self.len]
            .iter()
            .flatten()
            .any(|n| **n == *name)
            || self.spill.iter().any(|n| **n == *name)
    }
}

/// A set header's value: one the plan owns, one borrowed from what outlives it (the session's
/// identity, the pool's Host), or text in the plan's buffer (the forwarding headers: one
/// allocation for all of them, and one text for the peer's address in two headers).
#[derive(Debug)]
enum Value<'a> {
    Owned(HeaderValue),
    Borrowed(&'a HeaderValue),
    Text(Range<usize>),
}

/// The changes to a request's headers: names whose every value goes, what becomes of the
/// `Cookie` headers, and headers set (replacing any the request has), in order.
#[derive(Debug)]
pub struct Plan<'a> {
    pub(super) removals: Removals<'a>,
    /// `Upgrade` survives the removals (a WebSocket request).
    keep_upgrade: bool,
    cookie: CookieEdit,
    set: Vec<(Cow<'a, HeaderName>, Value<'a>)>,
    /// The lengths of the names in `set`.
    set_lengths: Lengths,
    /// The text of the [`Value::Text`] values; only valid header-value bytes get in.
    text: String,
}

/// Whether `bytes` may be a header value: the `http` crate's rule (visible ASCII, spaces,
/// tabs and obs-text), so the written head and the applied map agree, and no CR or LF. No
/// early exit: a branch-free pass over a few dozen bytes is the cheaper one.
pub(super) fn valid_value(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & (((b >= 32) & (b != 127)) | (b == b'\t'))
    })
}

impl<'a> Plan<'a> {
    pub(super) fn new(upgrade: bool) -> Self {
        Self {
            removals: Removals::new(),
            keep_upgrade: upgrade,
            cookie: CookieEdit::Keep,
            // The forwarding and identity headers and Host: one allocation.
            set: Vec::with_capacity(12),
            set_lengths: Lengths::default(),
            text: String::new(),
        }
    }

    /// Every value of `name` goes.
    pub fn remove(&mut self, name: HeaderName) {
        self.removals.push(Cow::Owned(name));
    }

    /// [`Plan::remove`] for a name that outlives the plan.
    pub fn remove_ref(&mut self, name: &'a HeaderName) {
        self.removals.push(Cow::Borrowed(name));
    }

    /// `name` is sent with `value` only (set after the removals), replacing what an earlier
    /// `set` or `add` gave it.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.set_value(Cow::Owned(name), Value::Owned(value));
    }

    /// [`Plan::set`] for a name and value that outlive the plan.
    pub fn set_ref(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.set_value(Cow::Borrowed(name), Value::Borrowed(value));
    }

    fn set_value(&mut self, name: Cow<'a, HeaderName>, value: Value<'a>) {
        match self.set.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => {
                self.set_lengths.add(&name);
                self.set.push((name, value));
            }
        }
    }

    /// [`Plan::set`] for a name no earlier `set` or `add` of this plan used: no search for an
    /// earlier value (about a hundred instructions a call, ten calls a request). The planner's
    /// names are distinct by construction: the forwarding headers and `Connection` once each,
    /// the identity headers under names validation keeps apart from each other and from every
    /// header the gateway sets (`config/validate/headers.rs`, docs/security.md#34, #40), and
    /// `Host`, which no identity header may be named. The assertion's header may share a
    /// configured identity header's name and goes through `set`.
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.add_value(Cow::Owned(name), Value::Owned(value));
    }

    /// [`Plan::add`] for a name and value that outlive the plan.
    pub fn add_ref(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.add_value(Cow::Borrowed(name), Value::Borrowed(value));
    }

    /// [`Plan::add`] for a name that outlives the plan and a value of its own.
    pub fn add_owned(&mut self, name: &'a HeaderName, value: HeaderValue) {
        self.add_value(Cow::Borrowed(name), Value::Owned(value));
    }

    fn add_value(&mut self, name: Cow<'a, HeaderName>, value: Value<'a>) {
        debug_assert!(
            self.set.iter().all(|(n, _)| *n != name),
            "{name} planned twice"
        );
        self.set_lengths.add(&name);
        self.set.push((name, value));
    }

    /// The buffer the planner writes the forwarding headers' text into, for
    /// [`Plan::add_text`]; `additional` is the room the text is expected to need.
    pub(super) fn text(&mut self, additional: usize) -> &mut String {
        self.text.reserve(additional);
        &mut self.text
    }

    /// [`Plan::add`] with the buffer's text in `text` (written with [`Plan::text`]). The
    /// caller checked that text with [`valid_value`] (what came from elsewhere than the
    /// gateway's own digits and punctuation: a request header's text is valid already).
    pub(super) fn add_text(&mut self, name: &'a HeaderName, text: Range<usize>) {
        debug_assert!(
            self.text
                .as_bytes()
                .get(text.clone())
                .is_some_and(valid_value),
            "{name}: not a header value"
        );
        self.add_value(Cow::Borrowed(name), Value::Text(text));
    }

    /// What becomes of the `Cookie` headers.
    pub fn cookies(&mut self, edit: CookieEdit) {
        self.cookie = edit;
    }

    fn bytes<'s>(&'s self, value: &'s Value<'_>) -> &'s [u8] {
        match value {
            Value::Owned(v) => v.as_bytes(),
            Value::Borrowed(v) => v.as_bytes(),
            Value::Text(r) => self.text.as_bytes().get(r.clone()).unwrap_or_default(),
        }
    }

    /// Applies the plan to `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        let keep_upgrade = self.keep_upgrade;
        let cookie_removed = self.removals.contains(&COOKIE);
        self.removals
            .apply(headers, |n| keep_upgrade && n == UPGRADE);
        if !cookie_removed {
            self.cookie.apply(headers);
        }
        for (name, value) in self.set {
            let value = match value {
                Value::Owned(v) => v,
                Value::Borrowed(v) => v.clone(),
                // Valid by `add_text`.
                Value::Text(r) => match self.text.as_bytes().get(r).map(HeaderValue::from_bytes) {
                    Some(Ok(v)) => v,
                    _ => continue,
                },
            };
            headers.insert(name.into_owned(), value);
        }
    }

    /// Whether a header of the request is left out of what is sent (removed, replaced by a
    /// set one, or a `Cookie`, which [`Plan::write`] writes itself).
    fn drops(&self, name: &HeaderName) -> bool {
        *name == COOKIE
            || (self.removals.contains(name) && !(self.keep_upgrade && name == UPGRADE))
            || self.is_set(name)
    }

    fn is_set(&self, name: &HeaderName) -> bool {
        self.set_lengths.may_contain(name) && self.set.iter().any(|(n, _)| **n == *name)
    }

    /// Writes the request's headers as the plan leaves them, as HTTP/1.1 header lines.
    pub fn write(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        for (name, value) in headers {
            if !self.drops(name) {
                line(out, name, value.as_bytes());
            }
        }
        let cookie_removed = self.removals.contains(&COOKIE) || self.is_set(&COOKIE);
        if !cookie_removed {
            match &self.cookie {
                CookieEdit::Keep => headers
                    .get_all(COOKIE)
                    .iter()
                    .for_each(|v| line(out, &COOKIE, v.as_bytes())),
                CookieEdit::Replace(v) => line(out, &COOKIE, v.as_bytes()),
                CookieEdit::Remove => {}
            }
        }
        // The set lines are most of the head, and their size is known: one resize, then
        // copies without a capacity check each (about a third of a line's cost).
        let start = out.len();
        let size: usize = self
            .set
            .iter()
            .map(|(n, v)| n.as_str().len() + self.bytes(v).len() + 4)
            .sum();
        out.resize(start + size, 0);
        if out
            .get_mut(start..)
            .and_then(|buf| self.fill(buf))
            .is_none()
        {
            // Not reached (the size is the lines' own); should it be, the lines go one by one.
            out.truncate(start);
            for (name, value) in &self.set {
                line(out, name, self.bytes(value));
            }
        }
    }

    /// Writes the set lines into `buf`, which they fill exactly; `None` if they do not.
    fn fill(&self, mut buf: &mut [u8]) -> Option<()> {
        fn put<'b>(buf: &'b mut [u8], bytes: &[u8]) -> Option<&'b mut [u8]> {
            let (head, tail) = buf.split_at_mut_checked(bytes.len())?;
            head.copy_from_slice(bytes);
            Some(tail)
        }
        for (name, value) in &self.set {
            buf = put(buf, name.as_str().as_bytes())?;
            buf = put(buf, b": ")?;
            buf = put(buf, self.bytes(value))?;
            buf = put(buf, b"\r\n")?;
        }
        buf.is_empty().then_some(())
    }
}

fn line(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Strip;
    use crate::proxy::headers::tests::{info, map};
    use crate::proxy::headers::{ForwardInfo, plan_request};

    /// The header lines, sorted by name, each name's values in order.
    fn lines(text: &[u8]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = String::from_utf8_lossy(text)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        // A stable sort keeps each name's values in their order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn plan_for(headers: &HeaderMap, trusted: bool, upgrade: bool) -> Plan<'static> {
        let fwd = ForwardInfo {
            host: "app.example",
            ..info(trusted)
        };
        let mut plan = plan_request(headers, &fwd, &Strip::default(), upgrade);
        plan.cookies(CookieEdit::of(headers));
        plan.set(
            HeaderName::from_static("x-otpgate-email"),
            HeaderValue::from_static("a@b.example"),
        );
        plan.remove(HeaderName::from_static("x-custom-secret"));
        plan.set(http::header::HOST, HeaderValue::from_static("up:8080"));
        plan
    }

    /// `add` is for names planned once; a second one is a planner bug, caught in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "planned twice")]
    fn adding_a_name_twice_is_caught() {
        let mut plan = Plan::new(false);
        plan.add(http::header::HOST, HeaderValue::from_static("a"));
        plan.add(http::header::HOST, HeaderValue::from_static("b"));
    }

    /// The length filter only skips comparisons: a name of a removed or set length that is
    /// another name stays, names of 63 bytes and more share a bit and are still told apart.
    #[test]
    fn names_of_the_same_length_are_compared_exactly() {
        let long_a = format!("x-{}", "a".repeat(70));
        let long_b = format!("x-{}", "b".repeat(80));
        let headers = map(&[
            ("x-drop", "1"),
            ("x-keep", "2"),
            ("x-set1", "3"),
            (long_a.as_str(), "4"),
            (long_b.as_str(), "5"),
        ]);
        let mut plan = Plan::new(false);
        plan.remove(HeaderName::from_static("x-drop"));
        plan.remove(HeaderName::from_bytes(long_a.as_bytes()).unwrap());
        plan.set(
            HeaderName::from_static("x-set1"),
            HeaderValue::from_static("planned"),
        );
        let mut out = Vec::new();
        plan.write(&headers, &mut out);
        assert_eq!(
            lines(&out),
            vec![
                (long_b, "5".to_owned()),
                ("x-keep".to_owned(), "2".to_owned()),
                ("x-set1".to_owned(), "planned".to_owned()),
            ]
        );
    }

    /// The direct path writes exactly the headers the map path leaves (docs/security.md#34,
    /// #40): whatever is stripped from the map is never written.
    #[test]
    fn sec_40_written_heads_match_the_applied_plan() {
        let cases: &[&[(&str, &str)]] = &[
            &[("host", "app.example"), ("accept", "*/*")],
            &[
                ("host", "app.example"),
                ("cookie", "__Host-otpgate=abc"),
                ("x-otpgate-email", "evil@x.example"),
                ("x_otpgate_user", "evil"),
                ("remote-user", "root"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "5.6.7.8"),
                ("forwarded", "for=1.2.3.4"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
                ("te", "trailers"),
                ("x-custom-secret", "s"),
                ("accept", "text/html"),
                ("accept", "application/json"),
            ],
            &[
                ("cookie", "a=1; __Host-otpgate=abc; b=2"),
                ("cookie", "c=3"),
                ("upgrade", "websocket"),
                ("otpgate-client-secret", "x"),
            ],
            &[("cookie", "theme=dark"), ("user-agent", "t")],
        ];
        for (i, pairs) in cases.iter().enumerate() {
            for trusted in [false, true] {
                for upgrade in [false, true] {
                    let headers = map(pairs);
                    let mut written = Vec::new();
                    plan_for(&headers, trusted, upgrade).write(&headers, &mut written);
                    let mut applied = headers.clone();
                    plan_for(&headers, trusted, upgrade).apply(&mut applied);
                    let mut expected = Vec::new();
                    Plan::new(false).write(&applied, &mut expected);
                    assert_eq!(
                        lines(&written),
                        lines(&expected),
                        "case {i}, trusted {trusted}, upgrade {upgrade}"
                    );
                    let text = String::from_utf8_lossy(&written).to_ascii_lowercase();
                    assert!(!text.contains("otpgate=abc"), "case {i}: {text}");
                    assert!(!text.contains("evil"), "case {i}: {text}");
                    assert!(!text.contains("x-custom-secret"), "case {i}: {text}");
                }
            }
        }
    }
}
