//! Socket addresses in the kernel's format: [`SockAddr`] (`sockaddr_storage` and its
//! length) and its conversions from and to `std`'s addresses and Unix paths, and the
//! [`Domain`] a socket is created in.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest Unix socket path, in bytes, without its terminating NUL
/// (`sizeof(sun_path) - 1`, 107 on Linux).
pub(crate) const UNIX_PATH_MAX: usize = empty_sockaddr_un().sun_path.len() - 1;

const fn empty_sockaddr_un() -> libc::sockaddr_un {
    libc::sockaddr_un {
        sun_family: 0,
        sun_path: [0; 108],
    }
}

/// A socket address in the kernel's format (`sockaddr_storage` plus its length).
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    pub(super) storage: libc::sockaddr_storage,
    pub(super) len: libc::socklen_t,
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(a) = self.inet() {
            write!(f, "SockAddr({a})")
        } else if let Some(p) = self.unix_path() {
            write!(f, "SockAddr(unix:{})", p.display())
        } else {
            write!(f, "SockAddr(family {})", self.family())
        }
    }
}

/// Address families this crate listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// `AF_INET`.
    Inet4,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
}

impl Domain {
    pub(super) fn raw(self) -> libc::c_int {
        match self {
            Domain::Inet4 => libc::AF_INET,
            Domain::Inet6 => libc::AF_INET6,
            Domain::Unix => libc::AF_UNIX,
        }
    }
}

impl SockAddr {
    pub(crate) fn zeroed() -> SockAddr {
        SockAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero bytes are a valid value.
            storage: unsafe { mem::zeroed() },
            len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The `sockaddr_in` / `sockaddr_in6` for an IP socket address.
    pub(crate) fn from_inet(addr: &SocketAddr) -> SockAddr {
        let mut out = SockAddr::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                unsafe {
                    std::ptr::write(
                        (&mut out.storage as *mut libc::sockaddr_storage).cast(),
                        sin,
                    )
                };
                out.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe {
                    std::ptr::write(
                        (&mut out.storage as *mut libc::sockaddr_storage).cast(),
                        sin6,
                    )
                };
                out.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        out
    }

    /// The `sockaddr_un` for a filesystem path.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty path or one containing a NUL byte; the raw OS error
    /// `ENAMETOOLONG` when the path is longer than [`UNIX_PATH_MAX`] bytes.
    pub(crate) fn from_unix_path(path: &Path) -> io::Result<SockAddr> {
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Unix socket path must be non-empty and contain no NUL byte",
            ));
        }
        if bytes.len() > UNIX_PATH_MAX {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let mut out = SockAddr::zeroed();
        let mut un = empty_sockaddr_un();
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in un.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_un.
        unsafe { std::ptr::write((&mut out.storage as *mut libc::sockaddr_storage).cast(), un) };
        // Family + path + terminating NUL, as the kernel reports pathname addresses.
        out.len = (mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(out)
    }

    /// A Unix socket address in the abstract namespace (Linux): `name` without the
    /// leading NUL that marks it, as systemd's `NOTIFY_SOCKET=@name` spells it.
    ///
    /// # Errors
    ///
    /// `ENAMETOOLONG` when the name does not fit.
    pub(crate) fn from_abstract(name: &[u8]) -> io::Result<SockAddr> {
        if name.len() > UNIX_PATH_MAX {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let mut out = SockAddr::zeroed();
        let mut un = empty_sockaddr_un();
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in un.sun_path[1..].iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_un.
        unsafe { std::ptr::write((&mut out.storage as *mut libc::sockaddr_storage).cast(), un) };
        // Family + the leading NUL + the name: abstract names are not NUL-terminated.
        out.len = (mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        Ok(out)
    }

    /// The address family (`AF_INET`, `AF_INET6`, `AF_UNIX`, …).
    pub(crate) fn family(&self) -> libc::c_int {
        self.storage.ss_family as libc::c_int
    }

    /// The IP socket address, if this is an `AF_INET` or `AF_INET6` address.
    pub(crate) fn inet(&self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in, and the length
                // covers it; sockaddr_storage is aligned for it.
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The filesystem path of an `AF_UNIX` address; `None` for unnamed and abstract
    /// addresses and for other families.
    pub(crate) fn unix_path(&self) -> Option<PathBuf> {
        if self.family() != libc::AF_UNIX {
            return None;
        }
        // SAFETY: the family says the storage holds a sockaddr_un; sockaddr_storage is
        // large and aligned enough for it.
        let un: libc::sockaddr_un =
            unsafe { std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast()) };
        let offset = mem::size_of::<libc::sa_family_t>();
        let path_len = (self.len as usize)
            .saturating_sub(offset)
            .min(un.sun_path.len());
        let raw: Vec<u8> = un.sun_path[..path_len].iter().map(|&c| c as u8).collect();
        if raw.first().map_or(true, |&b| b == 0) {
            return None; // unnamed, or abstract (leading NUL)
        }
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(PathBuf::from(OsStr::from_bytes(&raw[..end])))
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_round_trip() {
        for s in ["127.0.0.1:8080", "[::1]:443", "0.0.0.0:0", "[fe80::1%2]:9"] {
            let a: SocketAddr = match s.parse() {
                Ok(a) => a,
                Err(_) => SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, 2)),
            };
            assert_eq!(SockAddr::from_inet(&a).inet(), Some(a));
        }
    }

    #[test]
    fn unix_path_round_trip_and_limits() {
        let p = Path::new("/tmp/some.sock");
        let a = SockAddr::from_unix_path(p).unwrap();
        assert_eq!(a.family(), libc::AF_UNIX);
        assert_eq!(a.unix_path().as_deref(), Some(p));
        let long = "x".repeat(UNIX_PATH_MAX + 1);
        let e = SockAddr::from_unix_path(Path::new(&long)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
        let max = "y".repeat(UNIX_PATH_MAX);
        assert!(SockAddr::from_unix_path(Path::new(&max)).is_ok());
        assert!(SockAddr::from_unix_path(Path::new("")).is_err());
    }
}
