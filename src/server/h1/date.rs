//! The `Date` header value (RFC 9110 s6.6.1), formatted once a second per thread, as hyper's
//! server caches its own. The time comes from the gateway's injected clock.

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`: always this long.
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Appends `now` (since the Unix epoch) as an HTTP date.
pub(super) fn extend(out: &mut Vec<u8>, now: Duration) {
    let secs = now.as_secs();
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(UNIX_EPOCH + now);
            if formatted.len() == LEN {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            } else {
                // Years past 9999 only; written as they come, not cached.
                out.extend_from_slice(formatted.as_bytes());
                return;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn dates_follow_the_clock_given() {
        let mut out = Vec::new();
        super::extend(&mut out, Duration::from_secs(784_111_777));
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:37 GMT");
        out.clear();
        super::extend(&mut out, Duration::from_millis(784_111_778_500));
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:38 GMT");
    }
}
