//! Client addresses and trusted proxies.
//!
//! Behind a load balancer the TCP peer of every request is the proxy, not the client. Proxies
//! report the real client in `X-Forwarded-For` or in the standard `Forwarded` header (RFC 7239)
//! — but so can any client, so these headers are only believed when they come from a proxy you
//! trust. [`TrustedProxies`] holds that list and answers the two questions the layers of this
//! crate ask: *who is the client* ([`TrustedProxies::client_ip`]) and *did the client speak
//! HTTPS* ([`TrustedProxies::is_https`]).
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use http::Request;
//! use tower_rampart::net::{PeerAddr, TrustedProxies};
//!
//! let proxies = TrustedProxies::parse("10.0.0.0/8, fd00::/8").unwrap();
//!
//! // The load balancer (10.0.0.7) connected to us on behalf of 203.0.113.9.
//! let mut req = Request::builder()
//!     .header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
//!     .header("x-forwarded-proto", "https")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(PeerAddr("10.0.0.7:41000".parse::<SocketAddr>().unwrap()));
//!
//! // 198.51.100.1 was written by the client itself and is not believed: the walk stops at the
//! // first address the trusted proxy vouches for.
//! assert_eq!(proxies.client_ip(&req), Some("203.0.113.9".parse::<IpAddr>().unwrap()));
//! assert!(proxies.is_https(&req));
//!
//! // The same headers straight from the internet are ignored.
//! req.extensions_mut().insert(PeerAddr("192.0.2.50:5000".parse::<SocketAddr>().unwrap()));
//! assert_eq!(proxies.client_ip(&req), Some("192.0.2.50".parse::<IpAddr>().unwrap()));
//! assert!(!proxies.is_https(&req));
//! ```
//!
//! # How the client is found
//!
//! 1. The TCP peer comes from the request extensions ([`peer_addr`]). Without it there is no
//!    client address (`None`): nothing in the headers can be trusted without knowing who sent
//!    them.
//! 2. If the peer is not a trusted proxy, it is the client and the forwarding headers are
//!    ignored entirely (they were written by the client).
//! 3. Otherwise the forwarding header is walked from right to left (each proxy appends the
//!    address it saw). While the current hop is trusted, the walk moves one address to the
//!    left; the first untrusted address is the client. If every address is trusted, the
//!    leftmost one is the client.
//! 4. If the first untrusted entry is not an IP address (garbage, bytes that are not UTF-8,
//!    `unknown`, an RFC 7239 obfuscated identifier such as `_hidden`, a broken `Forwarded`
//!    element), there is no usable client address: [`TrustedProxies::client_addr`] says
//!    [`ClientAddrError::Unusable`] and [`TrustedProxies::client_ip`] `None`. The answer is
//!    never a trusted address (the proxy's own, which would put the client in the bucket of
//!    everyone behind it). Garbage to the left of the client does not matter.
//!
//! Headers are split at the byte level: a value that is not UTF-8, or a `Forwarded` element
//! with an unclosed quote, spoils only its own element, never the entry the proxy appended
//! after it (a quoted string never crosses a `,`).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, which dual-stack sockets report) are turned
//! into plain IPv4 everywhere: in peers, in header entries and in the trusted ranges.
//!
//! # Which header
//!
//! Exactly one forwarding header is read, chosen with [`TrustedProxies::with_header`]:
//! [`ProxyHeader::XForwardedFor`] (the default: nginx, HAProxy, Envoy, Traefik, cloud load
//! balancers) together with `X-Forwarded-Proto`, or [`ProxyHeader::Forwarded`] (RFC 7239,
//! `for=` and `proto=`). There is deliberately no "whichever is present" mode: a proxy that
//! only appends to `X-Forwarded-For` passes a client-written `Forwarded` header through
//! untouched, so preferring `Forwarded` whenever it appears would let any client choose its
//! own address.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::Request;
use http::header::{FORWARDED, HeaderName};

/// Written once for the crate; the cookie policy reaches it through here.
pub(crate) use crate::token::is_tchar;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A range of IP addresses in CIDR notation, such as `10.0.0.0/8` or `2001:db8::/32`.
///
/// Parsed with [`str::parse`]; a bare address (`127.0.0.1`, `::1`) is a single host (`/32` or
/// `/128`). Bits past the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`). IPv4-mapped IPv6
/// ranges (`::ffff:10.0.0.0/104`) are stored as the IPv4 range they denote.
///
/// ```
/// use tower_rampart::net::IpCidr;
///
/// let lan: IpCidr = "192.168.0.0/16".parse().unwrap();
/// assert!(lan.contains("192.168.4.20".parse().unwrap()));
/// assert!(lan.contains("::ffff:192.168.4.20".parse().unwrap())); // mapped IPv6 is IPv4
/// assert!(!lan.contains("192.169.0.1".parse().unwrap()));
/// assert_eq!(lan.to_string(), "192.168.0.0/16");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// The range of `prefix` leading bits of `addr`.
    ///
    /// Fails if `prefix` is longer than the address (32 for IPv4, 128 for IPv6).
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv4Addr};
    /// use tower_rampart::net::IpCidr;
    ///
    /// let cidr = IpCidr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7)), 8).unwrap();
    /// assert_eq!(cidr.to_string(), "10.0.0.0/8");
    /// assert!(IpCidr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 33).is_err());
    /// ```
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, InvalidCidr> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(InvalidCidr::new(
                format!("{addr}/{prefix}"),
                "prefix length is longer than the address",
            ));
        }
        Ok(Self::new_unchecked(addr, prefix))
    }

    /// `prefix` must be within range.
    fn new_unchecked(addr: IpAddr, prefix: u8) -> Self {
        // A mapped IPv6 range of /96 or longer is an IPv4 range.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            other => (other, prefix),
        };
        let addr = match addr {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask32(prefix))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask128(prefix))),
        };
        Self { addr, prefix }
    }

    /// The first address of the range.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The number of leading bits that are fixed.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the range. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask32(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask128(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpCidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| Err(InvalidCidr::new(s.to_owned(), reason));
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return bad("not an IP address");
        };
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some("") => return bad("missing prefix length after '/'"),
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
                return bad("prefix length is not a number");
            }
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ if addr.is_ipv4() => return bad("prefix length of an IPv4 range must be 0..=32"),
                _ => return bad("prefix length of an IPv6 range must be 0..=128"),
            },
        };
        Ok(Self::new_unchecked(addr, prefix))
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A trusted-proxy entry that is not a valid address or CIDR range.
///
/// Its message names the offending entry:
///
/// ```
/// use tower_rampart::net::TrustedProxies;
///
/// let err = TrustedProxies::parse("10.0.0.0/8, 10.0.0.300").unwrap_err();
/// assert_eq!(err.entry(), "10.0.0.300");
/// assert!(err.to_string().contains("\"10.0.0.300\""));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCidr {
    entry: String,
    reason: &'static str,
}

impl InvalidCidr {
    fn new(entry: String, reason: &'static str) -> Self {
        Self { entry, reason }
    }

    /// The entry that could not be parsed, as written.
    pub fn entry(&self) -> &str {
        &self.entry
    }
}

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trusted proxy range {:?}: {}",
            self.entry, self.reason
        )
    }
}

impl Error for InvalidCidr {}

/// Which forwarding header trusted proxies write.
///
/// See the [module documentation](self#which-header) for why exactly one is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For` for the client address and `X-Forwarded-Proto` for the scheme. The
    /// default.
    ///
    /// Several `X-Forwarded-For` headers are read as one list, in order. Entries may carry a
    /// port (`192.0.2.1:4711`, `[2001:db8::1]:4711`). For `X-Forwarded-Proto` the **leftmost**
    /// value counts: proxies that append put the scheme the client used at the edge first.
    /// (Behind an appending edge a client could write that value itself, but it only changes
    /// how its own response is treated; the header is never read from an untrusted peer.)
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`: `for=` for the client address and `proto=` for the scheme.
    ///
    /// The scheme is the `proto=` of the element the client address was taken from, which
    /// was written by a trusted proxy (with one proxy: the rightmost element, the one the
    /// peer added).
    Forwarded,
}

/// The proxies whose forwarding headers are believed.
///
/// Cheap to clone (the ranges are shared). The default trusts nobody: the TCP peer is the
/// client and forwarding headers are ignored.
///
/// ```
/// use tower_rampart::net::{ProxyHeader, TrustedProxies};
///
/// // Kubernetes pod network behind an ingress writing RFC 7239 headers.
/// let proxies = TrustedProxies::parse("10.0.0.0/8 fd00::/8")
///     .unwrap()
///     .with_header(ProxyHeader::Forwarded);
/// assert!(proxies.contains("10.1.2.3".parse().unwrap()));
/// assert!(!proxies.contains("8.8.8.8".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    cidrs: Arc<[IpCidr]>,
    header: ProxyHeader,
}

impl TrustedProxies {
    /// Trusts nobody: [`client_ip`](Self::client_ip) is always the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the given ranges.
    pub fn new(cidrs: impl IntoIterator<Item = IpCidr>) -> Self {
        Self {
            cidrs: cidrs.into_iter().collect(),
            header: ProxyHeader::default(),
        }
    }

    /// Parses a list of addresses and CIDR ranges separated by commas and/or whitespace, such
    /// as the value of a `TRUSTED_PROXIES` environment variable. An empty list trusts nobody.
    ///
    /// # Errors
    ///
    /// The first entry that is not an address or range; the error names it.
    ///
    /// ```
    /// use tower_rampart::net::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::parse("127.0.0.1, ::1 10.0.0.0/8").unwrap();
    /// assert_eq!(proxies.cidrs().len(), 3);
    /// assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    /// ```
    pub fn parse(list: &str) -> Result<Self, InvalidCidr> {
        let cidrs = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<IpCidr>, _>>()?;
        Ok(Self::new(cidrs))
    }

    /// Selects the forwarding header the trusted proxies write (default
    /// [`ProxyHeader::XForwardedFor`]).
    pub fn with_header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// The forwarding header that is read.
    pub fn header(&self) -> ProxyHeader {
        self.header
    }

    /// The trusted ranges.
    pub fn cidrs(&self) -> &[IpCidr] {
        &self.cidrs
    }

    /// Whether `ip` is a trusted proxy. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cidrs.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client's address: the TCP peer ([`peer_addr`]), then the forwarding header walked
    /// right to left while the hop is trusted (see the [module documentation](self)).
    ///
    /// `None` when the request carries no peer address, or when a trusted proxy's header
    /// names something that is not an address where the client should be
    /// ([`client_addr`](Self::client_addr) tells the two apart).
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        self.client_addr(req).ok()
    }

    /// Like [`client_ip`](Self::client_ip), saying why there is no address.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_rampart::net::{ClientAddrError, PeerAddr, TrustedProxies};
    ///
    /// let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "203.0.113.9, junk")
    ///     .body(())
    ///     .unwrap();
    /// assert_eq!(proxies.client_addr(&req), Err(ClientAddrError::NoPeer));
    /// req.extensions_mut().insert(PeerAddr("10.0.0.7:41000".parse::<SocketAddr>().unwrap()));
    /// assert_eq!(proxies.client_addr(&req), Err(ClientAddrError::Unusable));
    /// ```
    pub fn client_addr<B>(&self, req: &Request<B>) -> Result<IpAddr, ClientAddrError> {
        let peer = peer_addr(req)
            .ok_or(ClientAddrError::NoPeer)?
            .ip()
            .to_canonical();
        if !self.contains(peer) {
            return Ok(peer);
        }
        self.walk(req)
            .client_ip(peer)
            .ok_or(ClientAddrError::Unusable)
    }

    /// Whether the client reached us over HTTPS: the request URI's scheme is `https`, or the
    /// TCP peer is a trusted proxy that says so (`X-Forwarded-Proto: https`, or `proto=https`
    /// in `Forwarded`, depending on [`ProxyHeader`]). Scheme names compare case-insensitively.
    pub fn is_https<B>(&self, req: &Request<B>) -> bool {
        if req
            .uri()
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return true;
        }
        let Some(peer) = peer_addr(req) else {
            return false;
        };
        if !self.contains(peer.ip()) {
            return false;
        }
        match self.header {
            ProxyHeader::XForwardedFor => {
                // Leftmost value of the (possibly repeated, comma separated) header.
                let first = req
                    .headers()
                    .get_all(&X_FORWARDED_PROTO)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(trim_ows)
                    .find(|v| !v.is_empty());
                first.is_some_and(|v| v.eq_ignore_ascii_case("https"))
            }
            ProxyHeader::Forwarded => self
                .walk(req)
                .client_proto()
                .is_some_and(|p| p.eq_ignore_ascii_case("https")),
        }
    }

    fn walk<'a, B>(&self, req: &'a Request<B>) -> Walk<'a> {
        let mut walk = Walk::default();
        match self.header {
            ProxyHeader::XForwardedFor => {
                for value in req.headers().get_all(&X_FORWARDED_FOR) {
                    // Split before decoding: bytes that are not UTF-8 spoil their own entry
                    // only, never the one a proxy appended after them.
                    for entry in value.as_bytes().split(|&b| b == b',') {
                        let entry = trim_ows_bytes(entry);
                        if entry.is_empty() {
                            continue; // empty list elements are allowed and mean nothing
                        }
                        let hop = Hop {
                            ip: std::str::from_utf8(entry).ok().and_then(parse_node),
                            proto: None,
                        };
                        walk.push(self, hop);
                    }
                }
            }
            ProxyHeader::Forwarded => {
                for value in req.headers().get_all(FORWARDED) {
                    parse_forwarded(value.as_bytes(), |hop| walk.push(self, hop));
                }
            }
        }
        walk
    }
}

/// One hop of a forwarding header. `ip` is `None` for anything that is not an IP address.
#[derive(Clone, Copy, Debug, Default)]
struct Hop<'a> {
    ip: Option<IpAddr>,
    proto: Option<&'a str>,
}

/// The right-to-left walk, computed in one left-to-right pass without allocating: the result
/// is decided by the rightmost hop that is not a trusted address (the "stop").
#[derive(Debug, Default)]
struct Walk<'a> {
    /// The leftmost hop: the answer when every hop is trusted.
    first: Option<Hop<'a>>,
    /// The rightmost hop that is not a trusted address.
    stop: Option<Hop<'a>>,
}

impl<'a> Walk<'a> {
    fn push(&mut self, proxies: &TrustedProxies, hop: Hop<'a>) {
        if self.first.is_none() {
            self.first = Some(hop);
        }
        match hop.ip {
            Some(ip) if proxies.contains(ip) => {}
            _ => self.stop = Some(hop),
        }
    }

    /// The client: the stop's address; `None` when the stop is not an address (the client
    /// sent garbage); the leftmost address when every hop is trusted; the peer without hops.
    fn client_ip(&self, peer: IpAddr) -> Option<IpAddr> {
        match (self.stop, self.first) {
            (Some(stop), _) => stop.ip,
            (None, Some(first)) => first.ip,
            (None, None) => Some(peer),
        }
    }

    fn client_proto(&self) -> Option<&'a str> {
        match (self.stop, self.first) {
            (Some(hop), _) => hop.proto,
            (None, Some(hop)) => hop.proto,
            (None, None) => None,
        }
    }
}

/// Why [`TrustedProxies::client_addr`] found no client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAddrError {
    /// The request carries no TCP peer address: the server did not record it (a deployment
    /// mistake, see [`peer_addr`]).
    NoPeer,
    /// A trusted proxy forwarded a chain whose client entry is not an address (garbage,
    /// `unknown`, an obfuscated identifier, a broken element): the client sent something
    /// unusable.
    Unusable,
}

impl fmt::Display for ClientAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoPeer => "the server recorded no client address",
            Self::Unusable => "the forwarding header names no usable client address",
        })
    }
}

impl Error for ClientAddrError {}

/// Parses one node of a forwarding header: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`. Anything else (`unknown`, `_obfuscated`, garbage) is
/// `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = node.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

/// A port: 1-5 digits, or an RFC 7239 obfuscated port (`_abc`), which is fine to ignore.
fn is_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    digits || obfuscated
}

/// `s` without the optional whitespace (spaces and tabs) HTTP allows around list elements.
pub(crate) fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// [`trim_ows`] on bytes.
fn trim_ows_bytes(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses one `Forwarded` header value (RFC 7239 §4) and reports one [`Hop`] per element, left
/// to right. An element that is syntactically broken, lacks `for=`, or repeats `for` or `proto`
/// is reported with `ip: None` (it stops the walk) and no proto. Empty pairs are allowed
/// (`for=192.0.2.1;;proto=https`); an element of empty pairs only is skipped like an empty
/// element.
///
/// Quoted strings are returned raw (between the quotes): an escaped character never belongs
/// in an address or a scheme, so such values simply fail to parse. A quoted string never
/// crosses a `,` (no address or scheme contains one): an unclosed quote breaks its own
/// element only, and parsing resumes at the next element, so a client cannot swallow the
/// element a proxy appended. Bytes that are not UTF-8 break their element only.
fn parse_forwarded<'a>(bytes: &'a [u8], mut emit: impl FnMut(Hop<'a>)) {
    let text = |b: &'a [u8]| std::str::from_utf8(b).ok();
    let mut i = 0;
    loop {
        // One element: pairs separated by ';', ended by ',' or the end.
        let mut for_node: Option<&'a [u8]> = None;
        let mut proto: Option<&'a [u8]> = None;
        let mut ok = true;
        let mut pairs = 0;
        let mut seen_for = false;
        let mut seen_proto = false;
        loop {
            skip_ows(bytes, &mut i);
            if i >= bytes.len() || bytes[i] == b',' {
                break; // empty pair / empty element
            }
            if bytes[i] == b';' {
                i += 1; // an empty pair, allowed anywhere: `[pair] *(";" [pair])`
                continue;
            }
            let key_start = i;
            while i < bytes.len() && is_tchar(bytes[i]) {
                i += 1;
            }
            let key = &bytes[key_start..i];
            if key.is_empty() || i >= bytes.len() || bytes[i] != b'=' {
                ok = false;
                break;
            }
            i += 1;
            let val = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let start = i;
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b',' => break,
                        b'\\' if bytes.get(i + 1).is_some_and(|&b| b != b',') => i += 2,
                        b'"' => {
                            closed = true;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                if !closed {
                    ok = false;
                    break;
                }
                let v = &bytes[start..i];
                i += 1; // closing quote
                v
            } else {
                let start = i;
                while i < bytes.len() && is_tchar(bytes[i]) {
                    i += 1;
                }
                if start == i {
                    ok = false;
                    break;
                }
                &bytes[start..i]
            };
            pairs += 1;
            if key.eq_ignore_ascii_case(b"for") {
                ok &= !seen_for;
                seen_for = true;
                for_node = Some(val);
            } else if key.eq_ignore_ascii_case(b"proto") {
                ok &= !seen_proto;
                seen_proto = true;
                proto = Some(val);
            }
            skip_ows(bytes, &mut i);
            if i < bytes.len() && bytes[i] == b';' {
                i += 1;
                continue;
            }
            if i < bytes.len() && bytes[i] != b',' {
                ok = false;
            }
            break;
        }
        if !ok {
            // Skip the rest of the broken element: up to the next ',' (quotes do not protect
            // it, see above).
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            emit(Hop::default());
        } else if pairs > 0 {
            emit(Hop {
                ip: for_node.and_then(text).and_then(parse_node),
                proto: proto.and_then(text),
            });
        }
        if i >= bytes.len() {
            return;
        }
        i += 1; // the ','
    }
}

fn skip_ows(bytes: &[u8], i: &mut usize) {
    while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
        *i += 1;
    }
}

/// The TCP peer of a request, from its extensions: [`PeerAddr`], a plain
/// [`SocketAddr`] (as inserted by a hand-written hyper accept loop), or with the `axum` feature
/// `axum::extract::ConnectInfo<SocketAddr>` (from `into_make_service_with_connect_info`), or
/// with the `tonic` feature tonic's `TcpConnectInfo` (plain TCP servers; behind tonic's TLS,
/// copy `Request::remote_addr()` into a [`PeerAddr`]), in that order.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_rampart::net::{peer_addr, PeerAddr};
///
/// let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
/// let mut req = http::Request::new(());
/// assert_eq!(peer_addr(&req), None);
/// req.extensions_mut().insert(PeerAddr(addr));
/// assert_eq!(peer_addr(&req), Some(addr));
/// ```
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(*addr);
    }
    if let Some(addr) = ext.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = ext.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr();
    }
    None
}

/// The TCP peer of a connection, as a request extension for [`peer_addr`].
///
/// Insert it in your accept loop (or with a small layer) when your server does not already
/// provide the peer address in a form [`peer_addr`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        r
    }

    #[test]
    fn cidr_parsing_and_masking() {
        let c: IpCidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.prefix_len(), 8);
        let c: IpCidr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::1/128");
        let c: IpCidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains(ip("255.255.255.255")));
        assert!(!c.contains(ip("::1")));
        let c: IpCidr = "::/0".parse().unwrap();
        assert!(c.contains(ip("2001:db8::1")));
        // a mapped address is IPv4, so an all-IPv6 range does not contain it
        assert!(!c.contains(ip("::ffff:1.2.3.4")));
    }

    #[test]
    fn cidr_errors() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "host",
            "10.0.0/8",
            "[::1]",
            " 10.0.0.1",
        ] {
            let err = bad.parse::<IpCidr>().unwrap_err();
            assert_eq!(err.entry(), bad);
        }
        assert!(IpCidr::new(ip("::1"), 129).is_err());
        assert!(IpCidr::new(ip("::1"), 128).is_ok());
    }

    #[test]
    fn node_parsing() {
        assert_eq!(parse_node("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:8080"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:_abc"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("[::ffff:1.2.3.4]:1"), Some(ip("1.2.3.4")));
        for bad in [
            "unknown",
            "_hidden",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[1.2.3.4]",
            "1.2.3.4:",
            "1.2.3.4:123456",
            "1.2.3.4:80:80",
            "",
        ] {
            assert_eq!(parse_node(bad), None, "{bad}");
        }
    }

    fn forwarded(value: &str) -> Vec<(Option<IpAddr>, Option<&str>)> {
        let mut out = Vec::new();
        parse_forwarded(value.as_bytes(), |h| out.push((h.ip, h.proto)));
        out
    }

    #[test]
    fn forwarded_syntax() {
        assert_eq!(
            forwarded(
                r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#
            ),
            vec![
                (Some(ip("192.0.2.60")), Some("http")),
                (Some(ip("2001:db8:cafe::17")), None)
            ]
        );
        // empty elements are skipped, OWS around pairs is fine
        assert_eq!(
            forwarded(" , for=10.0.0.1 ; proto=https ,"),
            vec![(Some(ip("10.0.0.1")), Some("https"))]
        );
        // an element without for= stops the walk but keeps its proto
        assert_eq!(forwarded("proto=https"), vec![(None, Some("https"))]);
        // broken elements become one stop each, and parsing resumes after them; a quoted
        // string ends at a ',' (it used to swallow the rest of the header)
        assert_eq!(
            forwarded(r#"for="1.2.3.4, for=5.6.7.8;x, for=9.9.9.9"#),
            vec![(None, None), (None, None), (Some(ip("9.9.9.9")), None)]
        );
        assert_eq!(
            forwarded(r#"for=1.2.3.4;for=5.6.7.8, for="a,b" x, for=9.9.9.9"#),
            vec![
                (None, None),
                (None, None),
                (None, None),
                (Some(ip("9.9.9.9")), None)
            ]
        );
        assert_eq!(forwarded("for="), vec![(None, None)]);
        // Empty pairs are allowed anywhere in an element (RFC 7239 §4: `[pair] *(";" [pair])`);
        // an element of empty pairs only is an empty element (found by tests/properties.rs:
        // they used to break the element, turning a valid chain into "unusable").
        assert_eq!(
            forwarded("for=192.0.2.1;;proto=https"),
            vec![(Some(ip("192.0.2.1")), Some("https"))]
        );
        assert_eq!(
            forwarded(" ; for=192.0.2.1 ;; ; proto=https;"),
            vec![(Some(ip("192.0.2.1")), Some("https"))]
        );
        assert_eq!(forwarded(";"), vec![]);
        assert_eq!(
            forwarded(" ; ;, for=192.0.2.1"),
            vec![(Some(ip("192.0.2.1")), None)]
        );
        assert_eq!(forwarded("=x"), vec![(None, None)]);
        assert_eq!(forwarded("for=unknown"), vec![(None, None)]);
        assert_eq!(forwarded(r#"for="\1.2.3.4""#), vec![(None, None)]);
        // unquoted IPv6 is tolerated only as far as tokens go: ':' is not a tchar
        assert_eq!(forwarded("for=2001:db8::1"), vec![(None, None)]);
    }

    /// A request whose header values are raw bytes (not necessarily UTF-8).
    fn req_bytes(peer: &str, name: &str, values: &[&[u8]]) -> Request<()> {
        let mut r = req(peer, &[]);
        for v in values {
            r.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn a_malformed_entry_never_swallows_the_one_the_proxy_appended() {
        let p = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // Non-UTF-8 bytes in the client's part of X-Forwarded-For, in the same line as the
        // proxy's entry or in a line of their own.
        let r = req_bytes("10.0.0.1:1", "x-forwarded-for", &[b"\xff, 203.0.113.9"]);
        assert_eq!(p.client_ip(&r), Some(ip("203.0.113.9")));
        let r = req_bytes(
            "10.0.0.1:1",
            "x-forwarded-for",
            &[b"\xff\xfe", b"203.0.113.9"],
        );
        assert_eq!(p.client_ip(&r), Some(ip("203.0.113.9")));
        // An unclosed quote in Forwarded ends at the element's comma.
        let f = TrustedProxies::parse("10.0.0.0/8")
            .unwrap()
            .with_header(ProxyHeader::Forwarded);
        let r = req_bytes(
            "10.0.0.1:1",
            "forwarded",
            &[b"for=\"1.2.3.4, for=203.0.113.9"],
        );
        assert_eq!(f.client_ip(&r), Some(ip("203.0.113.9")));
        let r = req_bytes(
            "10.0.0.1:1",
            "forwarded",
            &[b"for=\"\xff\\, for=203.0.113.9;proto=https"],
        );
        assert_eq!(f.client_ip(&r), Some(ip("203.0.113.9")));
        assert!(f.is_https(&r));
        // Garbage right where the client should be: no address at all, never the proxy's.
        let r = req_bytes("10.0.0.1:1", "x-forwarded-for", &[b"203.0.113.9, \xff"]);
        assert_eq!(p.client_addr(&r), Err(ClientAddrError::Unusable));
        let r = req_bytes("10.0.0.1:1", "forwarded", &[b"for=\"203.0.113.9"]);
        assert_eq!(f.client_addr(&r), Err(ClientAddrError::Unusable));
    }

    #[test]
    fn walk_rules() {
        let p = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let xff = |peer, v| p.client_ip(&req(peer, &[("x-forwarded-for", v)]));
        // untrusted peer: header ignored
        assert_eq!(xff("1.1.1.1:1", "2.2.2.2"), Some(ip("1.1.1.1")));
        // trusted chain
        assert_eq!(
            xff("10.0.0.1:1", "3.3.3.3, 2.2.2.2, 10.0.0.9"),
            Some(ip("2.2.2.2"))
        );
        // all trusted: leftmost
        assert_eq!(
            xff("10.0.0.1:1", "10.0.0.5, 10.0.0.9"),
            Some(ip("10.0.0.5"))
        );
        // garbage where the client should be: the client sent garbage, never a trusted
        // address (it used to be the last good address, here the proxy's own)
        assert_eq!(xff("10.0.0.1:1", "2.2.2.2, junk, 10.0.0.9"), None);
        assert_eq!(xff("10.0.0.1:1", "2.2.2.2, junk"), None);
        assert_eq!(
            p.client_addr(&req("10.0.0.1:1", &[("x-forwarded-for", "junk")])),
            Err(ClientAddrError::Unusable)
        );
        assert_eq!(
            p.client_addr(&Request::new(())),
            Err(ClientAddrError::NoPeer)
        );
        // garbage left of the client does not matter
        assert_eq!(xff("10.0.0.1:1", "junk, 2.2.2.2"), Some(ip("2.2.2.2")));
        // empty header: the peer
        assert_eq!(xff("10.0.0.1:1", ""), Some(ip("10.0.0.1")));
        // no peer, no answer
        assert_eq!(p.client_ip(&Request::new(())), None);
    }
}
