//! Client address and scheme resolution through trusted proxies.

mod common;

use std::net::{IpAddr, SocketAddr};

use http::Request;
use tower_rampart::net::{
    ClientAddrError, IpCidr, PeerAddr, ProxyHeader, TrustedProxies, peer_addr,
};

use common::{Rng, from_peer as request};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lb() -> TrustedProxies {
    TrustedProxies::parse("10.0.0.0/8, fd00::/8").unwrap()
}

#[test]
fn spoofed_x_forwarded_for_from_untrusted_peer_is_ignored() {
    let req = request(
        "203.0.113.7:50000",
        &[
            ("x-forwarded-for", "10.0.0.1, 1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("203.0.113.7")));
    assert!(!lb().is_https(&req));
    // trusting nobody is the default
    assert_eq!(
        TrustedProxies::default().client_ip(&req),
        Some(ip("203.0.113.7"))
    );
    assert_eq!(
        TrustedProxies::none().client_ip(&req),
        Some(ip("203.0.113.7"))
    );
}

#[test]
fn client_forged_leftmost_entries_are_not_believed() {
    // The client sent "X-Forwarded-For: 6.6.6.6"; the trusted load balancer appended the address
    // it saw.
    let req = request(
        "10.0.0.2:1",
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.4")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
}

#[test]
fn trusted_chain_of_several_hops() {
    // client -> CDN (trusted 10.1.x) -> LB (trusted 10.2.x) -> app
    let req = request(
        "10.2.0.5:1",
        &[("x-forwarded-for", "7.7.7.7, 198.51.100.4, 10.1.0.9")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));

    // the same chain split over several headers (one per proxy) reads as one list
    let mut req = request("10.2.0.5:1", &[]);
    for v in ["7.7.7.7", "198.51.100.4", "10.1.0.9"] {
        req.headers_mut()
            .append("x-forwarded-for", v.parse().unwrap());
    }
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));

    // only the CDN trusted: the LB address is then the client
    let only_cdn = TrustedProxies::parse("10.2.0.5").unwrap();
    assert_eq!(only_cdn.client_ip(&req), Some(ip("10.1.0.9")));

    // every hop trusted: the leftmost address
    let req = request("10.2.0.5:1", &[("x-forwarded-for", "10.9.9.9,10.1.0.9")]);
    assert_eq!(lb().client_ip(&req), Some(ip("10.9.9.9")));

    // trusted peer without any header: the peer itself
    assert_eq!(
        lb().client_ip(&request("10.2.0.5:1", &[])),
        Some(ip("10.2.0.5"))
    );
}

#[test]
fn ports_and_ipv6_in_x_forwarded_for() {
    let req = request(
        "[fd00::1]:443",
        &[("x-forwarded-for", "[2001:db8::7]:4711, 198.51.100.4:80")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    let req = request("[fd00::1]:443", &[("x-forwarded-for", "2001:db8::7")]);
    assert_eq!(lb().client_ip(&req), Some(ip("2001:db8::7")));
}

#[test]
fn garbage_where_the_client_should_be_is_no_address_never_a_trusted_one() {
    // (Before: the last good address to the garbage's right, often the proxy's own.)
    for header in [
        "198.51.100.4, not-an-ip, 10.0.0.8",
        "198.51.100.4, unknown",
        "198.51.100.4, 999.1.1.1",
        "198.51.100.4, 10.0.0.8 10.0.0.9",
    ] {
        let req = request("10.0.0.2:1", &[("x-forwarded-for", header)]);
        assert_eq!(lb().client_ip(&req), None, "{header}");
        assert_eq!(
            lb().client_addr(&req),
            Err(ClientAddrError::Unusable),
            "{header}"
        );
    }
    // garbage left of the client does not matter
    let req = request(
        "10.0.0.2:1",
        &[("x-forwarded-for", "garbage, 198.51.100.4")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    // bytes that are not UTF-8 spoil their own entry only
    for (value, want) in [
        (&b"198.51.100.4, \xff"[..], None),
        (b"\xff, 198.51.100.4", Some(ip("198.51.100.4"))),
        (b"\xff\xfe,198.51.100.4, 10.0.0.9", Some(ip("198.51.100.4"))),
    ] {
        let mut req = request("10.0.0.2:1", &[]);
        req.headers_mut().append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        assert_eq!(lb().client_ip(&req), want, "{value:?}");
    }
}

#[test]
fn forwarded_header_with_ipv6_ports_and_obfuscation() {
    let fwd = lb().with_header(ProxyHeader::Forwarded);
    assert_eq!(fwd.header(), ProxyHeader::Forwarded);
    let req = request(
        "10.0.0.2:1",
        &[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.2"#,
        )],
    );
    assert_eq!(fwd.client_ip(&req), Some(ip("2001:db8:cafe::17")));
    // the scheme is the one of the element the client was found in
    assert!(fwd.is_https(&req));

    // trusted IPv6 hop, then a client
    let req = request(
        "[fd00::2]:1",
        &[(
            "forwarded",
            r#"for=198.51.100.4;proto=https, For="[fd00::9]""#,
        )],
    );
    assert_eq!(fwd.client_ip(&req), Some(ip("198.51.100.4")));
    assert!(fwd.is_https(&req));

    // obfuscated identifiers and "unknown" where the client should be: no usable address
    // (never the proxy's own)
    for value in [
        "for=198.51.100.4, for=_hidden",
        "for=198.51.100.4, for=unknown",
        "for=198.51.100.4, proto=https",
    ] {
        let req = request("10.0.0.2:1", &[("forwarded", value)]);
        assert_eq!(
            fwd.client_addr(&req),
            Err(ClientAddrError::Unusable),
            "{value}"
        );
    }
    // ... but a trusted proxy's proto= still counts even when it hides the client
    let req = request("10.0.0.2:1", &[("forwarded", "for=unknown;proto=https")]);
    assert!(fwd.is_https(&req));

    // several Forwarded headers are one list
    let mut req = request("10.0.0.2:1", &[]);
    req.headers_mut()
        .append("forwarded", "for=6.6.6.6".parse().unwrap());
    req.headers_mut().append(
        "forwarded",
        "for=198.51.100.4, for=10.3.3.3".parse().unwrap(),
    );
    assert_eq!(fwd.client_ip(&req), Some(ip("198.51.100.4")));
}

#[test]
fn exactly_one_header_kind_is_read() {
    // The proxy only writes X-Forwarded-For; a client-written Forwarded header passes through
    // it and must not be believed.
    let req = request(
        "10.0.0.2:1",
        &[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-forwarded-for", "198.51.100.4"),
        ],
    );
    assert_eq!(lb().header(), ProxyHeader::XForwardedFor);
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    assert!(!lb().is_https(&req));
    // and the other way round
    let fwd = lb().with_header(ProxyHeader::Forwarded);
    let req = request(
        "10.0.0.2:1",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.4"),
        ],
    );
    assert_eq!(fwd.client_ip(&req), Some(ip("198.51.100.4")));
    assert!(!fwd.is_https(&req));
}

#[test]
fn ipv4_mapped_addresses_are_ipv4() {
    // dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d
    let req = request(
        "[::ffff:10.0.0.2]:1",
        &[("x-forwarded-for", "::ffff:198.51.100.4")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    // an untrusted mapped peer is reported as IPv4
    let req = request("[::ffff:198.51.100.4]:1", &[]);
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    // mapped hops in the header are trusted as their IPv4 address
    let req = request(
        "10.0.0.2:1",
        &[("x-forwarded-for", "198.51.100.4, [::ffff:10.0.0.3]:80")],
    );
    assert_eq!(lb().client_ip(&req), Some(ip("198.51.100.4")));
    // mapped ranges are IPv4 ranges
    let mapped = TrustedProxies::parse("::ffff:10.0.0.0/104").unwrap();
    assert!(mapped.contains(ip("10.20.30.40")));
    assert!(mapped.contains(ip("::ffff:10.20.30.40")));
    assert_eq!(mapped.cidrs()[0].to_string(), "10.0.0.0/8");
    // the Forwarded form of a mapped address
    let fwd = lb().with_header(ProxyHeader::Forwarded);
    let req = request(
        "10.0.0.2:1",
        &[("forwarded", r#"for="[::ffff:198.51.100.4]:1""#)],
    );
    assert_eq!(fwd.client_ip(&req), Some(ip("198.51.100.4")));
}

#[test]
fn bad_cidr_error_names_the_entry() {
    for (list, entry) in [
        ("10.0.0.0/8, 10.0.0.0/33", "10.0.0.0/33"),
        ("10.0.0.0/8 localhost", "localhost"),
        ("fd00::/129", "fd00::/129"),
        ("1.2.3.4/", "1.2.3.4/"),
        ("1.2.3.4/x", "1.2.3.4/x"),
    ] {
        let err = TrustedProxies::parse(list).unwrap_err();
        assert_eq!(err.entry(), entry);
        let message = err.to_string();
        assert!(message.contains(&format!("\"{entry}\"")), "{message}");
        let _: &dyn std::error::Error = &err;
    }
    assert!("1.2.3.4/x".parse::<IpCidr>().is_err());
}

#[test]
fn slash_zero_and_host_entries() {
    let all_v4 = TrustedProxies::parse("0.0.0.0/0").unwrap();
    assert!(all_v4.contains(ip("8.8.8.8")));
    assert!(!all_v4.contains(ip("2001:db8::1")));
    // everything trusted: the leftmost address wins
    let req = request("8.8.8.8:1", &[("x-forwarded-for", "1.1.1.1, 9.9.9.9")]);
    assert_eq!(all_v4.client_ip(&req), Some(ip("1.1.1.1")));

    let all_v6 = TrustedProxies::parse("::/0").unwrap();
    assert!(all_v6.contains(ip("2001:db8::1")));
    assert!(!all_v6.contains(ip("8.8.8.8")));

    let hosts = TrustedProxies::parse("127.0.0.1,::1").unwrap();
    assert_eq!(hosts.cidrs()[0].prefix_len(), 32);
    assert_eq!(hosts.cidrs()[1].prefix_len(), 128);
    assert!(hosts.contains(ip("127.0.0.1")));
    assert!(!hosts.contains(ip("127.0.0.2")));
    assert!(hosts.contains(ip("::1")));

    assert!(TrustedProxies::parse("").unwrap().cidrs().is_empty());
    assert!(TrustedProxies::parse(" , ,").unwrap().cidrs().is_empty());
    let built = TrustedProxies::new(["10.0.0.0/8".parse::<IpCidr>().unwrap()]);
    assert!(built.contains(ip("10.255.0.1")));
}

#[test]
fn is_https_sources() {
    // the request's own scheme
    let mut req = Request::get("https://example.com/").body(()).unwrap();
    assert!(TrustedProxies::none().is_https(&req));
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
    assert!(TrustedProxies::none().is_https(&req));

    // X-Forwarded-Proto only from a trusted peer; leftmost value; case-insensitive
    for (values, want) in [
        (&["https"][..], true),
        (&["HTTPS"], true),
        (&["http"], false),
        (&["https, http"], true),
        (&["http, https"], false),
        (&["https", "http"], true),
        (&[" , https"], true),
    ] {
        let mut req = request("10.0.0.2:1", &[]);
        for v in values {
            req.headers_mut()
                .append("x-forwarded-proto", v.parse().unwrap());
        }
        assert_eq!(lb().is_https(&req), want, "{values:?}");
    }
    // no peer known: headers cannot be trusted
    let req = Request::builder()
        .header("x-forwarded-proto", "https")
        .body(())
        .unwrap();
    assert!(!lb().is_https(&req));
}

#[test]
fn peer_address_sources() {
    let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut req = Request::new(());
    assert_eq!(peer_addr(&req), None);
    assert_eq!(lb().client_ip(&req), None);
    req.extensions_mut().insert(addr);
    assert_eq!(peer_addr(&req), Some(addr));

    #[cfg(feature = "axum")]
    {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        assert_eq!(peer_addr(&req), Some(addr));
    }

    // PeerAddr is preferred when several are present
    let other: SocketAddr = "198.51.100.1:1".parse().unwrap();
    req.extensions_mut().insert(PeerAddr(other));
    assert_eq!(peer_addr(&req), Some(other));
}

#[test]
fn generated_headers_never_panic_and_never_invent_addresses() {
    let pieces = [
        "10.0.0.1",
        "10.9.9.9",
        "198.51.100.4",
        "2001:db8::1",
        "[2001:db8::1]:80",
        "[fd00::3]",
        "::ffff:10.0.0.5",
        "unknown",
        "_x",
        "for=",
        "for=10.0.0.7",
        "for=\"[fd00::1]:9\"",
        "proto=https",
        ";",
        ",",
        ", ",
        "\"",
        "\\",
        "=",
        " ",
        "\t",
        "[",
        "]",
        ":",
        "x",
        "é",
        "1.2.3",
        "for=198.51.100.9;proto=http",
        "FOR=203.0.113.1",
    ];
    let peers = [
        "10.0.0.2:1",
        "198.51.100.77:1",
        "[fd00::2]:1",
        "[::ffff:10.0.0.2]:1",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut from_header = 0;
    let mut unusable = 0;
    for round in 0..20_000u32 {
        let mut value = String::new();
        for i in 0..rng.next() % 6 {
            if i > 0 {
                value.push_str(rng.pick(&[", ", ",", ", ", ";", "", " "]));
            }
            value.push_str(rng.pick(&pieces));
        }
        let peer = rng.pick(&peers);
        let header = if round.is_multiple_of(2) {
            "x-forwarded-for"
        } else {
            "forwarded"
        };
        let kind = if rng.next().is_multiple_of(2) {
            ProxyHeader::Forwarded
        } else {
            ProxyHeader::XForwardedFor
        };
        let proxies = lb().with_header(kind);
        let Ok(hv) = http::HeaderValue::from_str(&value) else {
            continue;
        };
        let mut req = request(peer, &[]);
        req.headers_mut().append(header, hv);

        let peer_ip = peer.parse::<SocketAddr>().unwrap().ip().to_canonical();
        let _ = proxies.is_https(&req);
        let client = match proxies.client_addr(&req) {
            Ok(client) => client,
            Err(ClientAddrError::Unusable) => {
                // only a trusted peer's header can be unusable
                assert!(proxies.contains(peer_ip), "{value:?}");
                unusable += 1;
                continue;
            }
            Err(e) => panic!("a peer is known: {e}"),
        };
        if !proxies.contains(peer_ip) {
            assert_eq!(client, peer_ip, "{value:?}");
        } else if client != peer_ip {
            // any other answer must be an address written in the header
            assert!(
                written_addresses(&value).contains(&client),
                "{client} not in {value:?}"
            );
            from_header += 1;
        }
        assert_eq!(
            client.to_canonical(),
            client,
            "never an IPv4-mapped address"
        );
    }
    // the generator does reach the interesting cases
    assert!(from_header > 500, "{from_header}");
    assert!(unusable > 500, "{unusable}");
}

/// Every address that appears as a token of `value` (with or without a port).
fn written_addresses(value: &str) -> Vec<IpAddr> {
    value
        .split(|c: char| ",;\" \t=[]".contains(c))
        .filter_map(|token| {
            token
                .parse::<IpAddr>()
                .ok()
                .or_else(|| token.rsplit_once(':').and_then(|(a, _)| a.parse().ok()))
        })
        .map(|ip| ip.to_canonical())
        .collect()
}
