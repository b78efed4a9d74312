//! Who the client is: the peer address, or, behind a configured trusted proxy, the address that
//! proxy reports. Client-supplied forwarding headers are believed only from trusted peers
//! (docs/security.md#34).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::ConnInfo;
use crate::proxy::Downstream;

/// What the pipeline knows of the client of a request on `conn`.
pub fn downstream(conn: &ConnInfo, headers: &HeaderMap, trusted: &[IpNet]) -> Downstream {
    let peer = conn.peer.ip().to_canonical();
    let peer_trusted = is_trusted(peer, trusted);
    Downstream {
        ip: client_ip(peer, headers, trusted),
        peer,
        peer_trusted,
        https: client_https(conn.tls, peer_trusted, headers),
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client address. From an untrusted peer, the peer itself. From a trusted peer, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it
/// could have been written by the client).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut candidate = peer;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else {
            return candidate;
        };
        candidate = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    candidate
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // "[v6]:port" or "v4:port"
    e.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// Whether the client reached us over HTTPS: the listener's TLS, or a trusted proxy's
/// `X-Forwarded-Proto: https`. The last value counts: it was written by the nearest proxy (a
/// proxy that appends would leave a client's own value in front).
pub fn client_https(tls: bool, peer_trusted: bool, headers: &HeaderMap) -> bool {
    if tls {
        return true;
    }
    peer_trusted
        && headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h(&["1.2.3.4"]), &trusted), peer);
        assert!(!client_https(false, false, &{
            let mut m = HeaderMap::new();
            m.insert("x-forwarded-proto", "https".parse().unwrap());
            m
        }));
    }

    #[test]
    fn trusted_chain_yields_rightmost_untrusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(lb, &h(&["6.6.6.6, 198.51.100.7, 10.0.0.5"]), &trusted).to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            client_ip(lb, &h(&["6.6.6.6", "198.51.100.7"]), &trusted).to_string(),
            "198.51.100.7"
        );
        assert_eq!(client_ip(lb, &h(&[]), &trusted), lb);
        assert_eq!(
            client_ip(lb, &h(&["10.0.0.9"]), &trusted).to_string(),
            "10.0.0.9"
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(client_ip(lb, &h(&["198.51.100.7, garbage"]), &trusted), lb);
        assert_eq!(
            client_ip(lb, &h(&["[2001:db8::1]:443"]), &trusted).to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn the_nearest_proxys_scheme_counts() {
        let mut m = HeaderMap::new();
        m.append("x-forwarded-proto", "https".parse().unwrap());
        m.append("x-forwarded-proto", "http".parse().unwrap());
        assert!(
            !client_https(false, true, &m),
            "a client-supplied https in front does not count"
        );
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-proto", "http, https".parse().unwrap());
        assert!(client_https(false, true, &m));
        assert!(
            !client_https(false, false, &m),
            "untrusted peers are not believed"
        );
    }

    #[test]
    fn mapped_v4_peers_are_canonical() {
        let peer: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &HeaderMap::new(), &[]).to_string(),
            "192.0.2.1"
        );
    }
}
