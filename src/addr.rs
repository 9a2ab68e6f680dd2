//! Addresses: where a listener listens ([`ListenAddr`]) and who connected ([`PeerAddr`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::sys::sockaddr::UNIX_PATH_MAX;
use crate::text::Escaped;

/// The address a listener binds: the key under which the primary keeps one listening
/// handle for all workers (Node's `key` in `queryServer`: address, port, family, or path).
///
/// Parsed from, and displayed as, `HOST:PORT` (an IPv4 literal, `[IPv6]` or `localhost`),
/// `unix:PATH`, or `fd:N`:
///
/// ```
/// use cluster::ListenAddr;
///
/// let a: ListenAddr = "127.0.0.1:8080".parse()?;
/// assert_eq!(a.to_string(), "127.0.0.1:8080");
/// let u: ListenAddr = "unix:/run/app.sock".parse()?;
/// assert_eq!(u, ListenAddr::Unix("/run/app.sock".into()));
/// assert!("localhost:http".parse::<ListenAddr>().is_err());
/// # Ok::<(), cluster::AddrParseError>(())
/// ```
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    /// A TCP address, IPv4 or IPv6. Port 0 asks the kernel for a free port; in a
    /// cluster it is bound once, so every worker serves that same port.
    Tcp(SocketAddr),
    /// A Unix stream socket at this filesystem path. A stale socket file (nobody
    /// listening) is removed before binding; a path longer than the kernel's limit
    /// (107 bytes on Linux) is refused.
    Unix(PathBuf),
    /// A listening socket this process already holds as descriptor `N`, for instance one
    /// passed by systemd socket activation (`LISTEN_FDS`, starting at 3). The cluster
    /// adopts it: it must be a listening stream socket.
    Fd(i32),
    /// A socket passed by systemd socket activation (`systemd`, or `systemd:NAME`):
    /// checked against `LISTEN_PID` when it is set, found among `LISTEN_FDS` (by its
    /// `FileDescriptorName=` in `LISTEN_FDNAMES` when named; without a name, the one
    /// socket passed). The variables are read once and taken out of the environment,
    /// so workers do not inherit them; a missing `LISTEN_FDS` or a `LISTEN_PID` naming
    /// another process is an error naming it. Like `fd:N`, the socket is adopted: it
    /// belongs to the service manager.
    Systemd(Option<String>),
}

/// Written out to keep it out of line (`#[inline(never)]`): the derived `clone` was
/// inlined wherever an address is copied, a dozen places in the primary, about 5 KiB
/// of the release binary. It clones as the derive did.
impl Clone for ListenAddr {
    #[inline(never)]
    fn clone(&self) -> ListenAddr {
        match self {
            ListenAddr::Tcp(a) => ListenAddr::Tcp(*a),
            ListenAddr::Unix(p) => ListenAddr::Unix(p.clone()),
            ListenAddr::Fd(n) => ListenAddr::Fd(*n),
            ListenAddr::Systemd(name) => ListenAddr::Systemd(name.clone()),
        }
    }
}

impl ListenAddr {
    /// The TCP address, if this is one.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            _ => None,
        }
    }

    /// The Unix socket path, if this is one.
    pub fn as_unix(&self) -> Option<&Path> {
        match self {
            ListenAddr::Unix(p) => Some(p),
            _ => None,
        }
    }
}

/// Displayed in the syntax it parses from. A Unix path or a socket name is text someone
/// else may have chosen (a worker asks for the address): control characters and bytes
/// that are not UTF-8 are shown escaped (`unix:/tmp/x\n` with a backslash and an `n`,
/// `\u{1b}` for ESC, `\xff`), so printing an address never writes a line break or a
/// terminal escape into a log.
impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", Escaped(p.as_os_str().as_bytes())),
            ListenAddr::Fd(n) => write!(f, "fd:{n}"),
            ListenAddr::Systemd(None) => f.write_str("systemd"),
            ListenAddr::Systemd(Some(name)) => write!(f, "systemd:{}", Escaped(name.as_bytes())),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> ListenAddr {
        ListenAddr::Tcp(a)
    }
}

/// A listen address that could not be parsed; its message names the input and says
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrParseError {
    input: String,
    reason: String,
}

impl AddrParseError {
    fn new(input: &str, reason: impl Into<String>) -> AddrParseError {
        AddrParseError {
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for AddrParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid listen address {:?}: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for AddrParseError {}

impl From<AddrParseError> for io::Error {
    fn from(e: AddrParseError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

const EXPECTED: &str =
    "expected HOST:PORT (an IPv4 address, [IPv6 address] or localhost), unix:PATH or fd:N";

impl FromStr for ListenAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<ListenAddr, AddrParseError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrParseError::new(s, "the Unix socket path is empty"));
            }
            if path.contains('\0') {
                return Err(AddrParseError::new(
                    s,
                    "the Unix socket path contains a NUL byte",
                ));
            }
            if path.len() > UNIX_PATH_MAX {
                return Err(AddrParseError::new(
                    s,
                    format!(
                        "the Unix socket path is {} bytes long; the limit is {UNIX_PATH_MAX}",
                        path.len()
                    ),
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s == "systemd" {
            return Ok(ListenAddr::Systemd(None));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            // systemd's own rule for FileDescriptorName= (`fdname_is_valid`).
            let printable = |b: u8| (b' '..=b'~').contains(&b) && b != b':';
            if name.is_empty() || name.len() > 255 || !name.bytes().all(printable) {
                return Err(AddrParseError::new(
                    s,
                    "systemd:NAME needs a socket name as in FileDescriptorName= (printable \
                     ASCII, no ':', at most 255 bytes)",
                ));
            }
            return Ok(ListenAddr::Systemd(Some(name.to_string())));
        }
        if let Some(n) = s.strip_prefix("fd:") {
            return match crate::number::parse::<i32>(n) {
                Some(n) if n >= 0 => Ok(ListenAddr::Fd(n)),
                _ => Err(AddrParseError::new(
                    s,
                    "fd:N needs a non-negative descriptor number",
                )),
            };
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(a));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            return match crate::number::parse::<u16>(port) {
                Some(p) => Ok(ListenAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, p)))),
                None => Err(AddrParseError::new(
                    s,
                    "the port must be a number from 0 to 65535",
                )),
            };
        }
        // Say what is wrong as precisely as we can.
        match s.rsplit_once(':') {
            None => Err(AddrParseError::new(s, format!("no port; {EXPECTED}"))),
            Some((_, port)) if crate::number::parse::<u16>(port).is_none() => Err(AddrParseError::new(
                s,
                format!("the port {port:?} is not a number from 0 to 65535"),
            )),
            Some((host, _)) => Err(AddrParseError::new(
                s,
                format!("the host {host:?} is not an IP address or localhost (names are not resolved); {EXPECTED}"),
            )),
        }
    }
}

/// Things that can name a listen address, as `std::net::ToSocketAddrs` does for std's
/// listeners: [`ListenAddr`]; `SocketAddr` and its V4/V6 forms; `(host, port)` pairs
/// whose host is an `IpAddr`, `Ipv4Addr`, `Ipv6Addr`, or a string (an IP address,
/// with or without brackets, or `localhost`: names are not resolved); and strings in
/// [`ListenAddr`]'s syntax (`"127.0.0.1:8080"`, `"unix:/run/app.sock"`, `"fd:3"`).
///
/// ```
/// use cluster::{ListenAddr, ToListenAddr};
/// use std::net::Ipv6Addr;
/// let a = ("127.0.0.1", 8080).to_listen_addr().unwrap();
/// assert_eq!(a, "127.0.0.1:8080".parse::<ListenAddr>().unwrap());
/// let b = (Ipv6Addr::LOCALHOST, 0).to_listen_addr().unwrap();
/// assert_eq!(b.to_string(), "[::1]:0");
/// assert!(("example.com", 80).to_listen_addr().is_err());
/// ```
pub trait ToListenAddr {
    /// The address, or `InvalidInput` naming the value when it does not parse.
    fn to_listen_addr(&self) -> io::Result<ListenAddr>;
}

impl ToListenAddr for ListenAddr {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(self.clone())
    }
}

impl ToListenAddr for SocketAddr {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(*self))
    }
}

impl ToListenAddr for str {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(self.parse::<ListenAddr>()?)
    }
}

impl ToListenAddr for String {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        self.as_str().to_listen_addr()
    }
}

impl ToListenAddr for SocketAddrV4 {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(SocketAddr::V4(*self)))
    }
}

impl ToListenAddr for SocketAddrV6 {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(SocketAddr::V6(*self)))
    }
}

impl ToListenAddr for (IpAddr, u16) {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(SocketAddr::from(*self)))
    }
}

impl ToListenAddr for (Ipv4Addr, u16) {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(SocketAddr::from(*self)))
    }
}

impl ToListenAddr for (Ipv6Addr, u16) {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        Ok(ListenAddr::Tcp(SocketAddr::from(*self)))
    }
}

/// `(host, port)`: written as `host:port` (an IPv6 host in brackets) and parsed as any
/// address string is, so the errors are the same.
impl ToListenAddr for (&str, u16) {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        let (host, port) = *self;
        let text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        match text.parse::<ListenAddr>()? {
            a @ ListenAddr::Tcp(_) => Ok(a),
            // "unix:/x" as a host would parse as a path with ":port" appended.
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not an IP address or localhost"),
            )),
        }
    }
}

impl ToListenAddr for (String, u16) {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        (self.0.as_str(), self.1).to_listen_addr()
    }
}

impl<T: ToListenAddr + ?Sized> ToListenAddr for &T {
    fn to_listen_addr(&self) -> io::Result<ListenAddr> {
        (**self).to_listen_addr()
    }
}

/// The address of the peer of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-socket peer: its path if it bound one (clients usually do not).
    Unix(Option<PathBuf>),
}

/// A client's Unix path is its own choice: shown escaped, as [`ListenAddr`]'s.
impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix(Some(p)) => write!(f, "unix:{}", Escaped(p.as_os_str().as_bytes())),
            PeerAddr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for s in [
            "127.0.0.1:80",
            "[::1]:0",
            "unix:/tmp/a.sock",
            "fd:3",
            "0.0.0.0:65535",
        ] {
            let a: ListenAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "localhost:8080".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
    }

    #[test]
    fn host_and_port_pairs_name_tcp_addresses() {
        let want: ListenAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(("127.0.0.1", 8080).to_listen_addr().unwrap(), want);
        assert_eq!(("localhost", 8080).to_listen_addr().unwrap(), want);
        assert_eq!(
            (String::from("127.0.0.1"), 8080).to_listen_addr().unwrap(),
            want
        );
        assert_eq!((Ipv4Addr::LOCALHOST, 8080).to_listen_addr().unwrap(), want);
        assert_eq!(
            (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)
                .to_listen_addr()
                .unwrap(),
            want
        );
        assert_eq!(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)
                .to_listen_addr()
                .unwrap(),
            want
        );
        let v6: ListenAddr = "[::1]:0".parse().unwrap();
        assert_eq!(("::1", 0).to_listen_addr().unwrap(), v6);
        assert_eq!(("[::1]", 0).to_listen_addr().unwrap(), v6);
        assert_eq!((Ipv6Addr::LOCALHOST, 0).to_listen_addr().unwrap(), v6);
        for host in ["example.com", "unix:/tmp/x", "fd", ""] {
            let e = (host, 80).to_listen_addr().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{host:?}: {e}");
        }
    }

    #[test]
    fn rejects_with_clear_messages() {
        let cases = [
            ("8080", "no port"),
            ("127.0.0.1:99999", "not a number from 0 to 65535"),
            ("example.com:80", "not an IP address"),
            ("unix:", "empty"),
            ("fd:-1", "non-negative"),
            ("[::1:80", "not an IP address"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
            assert!(e.contains(input), "{input}: {e}");
        }
        let e = "systemd:web\x1b[2J".parse::<ListenAddr>().unwrap_err();
        assert!(e.to_string().contains("printable"), "{e}");
        let long = format!("unix:/{}", "a".repeat(200));
        let e = long.parse::<ListenAddr>().unwrap_err().to_string();
        assert!(e.contains("201 bytes long; the limit is 107"), "{e}");
    }

    /// A worker's address, printed: one line, no terminal escape (issue 19, item 9).
    #[test]
    fn displays_worker_chosen_text_escaped() {
        use std::os::unix::ffi::OsStrExt;
        let forged = "unix:/tmp/x\n[primary] forged line\x1b[2J";
        let a: ListenAddr = forged.parse().unwrap();
        assert_eq!(
            a.to_string(),
            "unix:/tmp/x\\n[primary] forged line\\u{1b}[2J"
        );
        let raw = std::ffi::OsStr::from_bytes(b"/tmp/\xff\r.sock");
        assert_eq!(
            ListenAddr::Unix(raw.into()).to_string(),
            "unix:/tmp/\\xff\\r.sock"
        );
        // A name the codec decoded from a worker's record, not parsed from text.
        let name = ListenAddr::Systemd(Some("a\nb".into()));
        assert_eq!(name.to_string(), "systemd:a\\nb");
        let peer = PeerAddr::Unix(Some("/tmp/c\x1b]0;title\x07".into()));
        assert_eq!(peer.to_string(), "unix:/tmp/c\\u{1b}]0;title\\u{7}");
        // In the errors and reports built on it.
        let e = crate::error::ListenError::new(a, std::io::Error::from_raw_os_error(13));
        assert!(!e.to_string().contains(['\n', '\x1b']), "{e}");
    }
}
