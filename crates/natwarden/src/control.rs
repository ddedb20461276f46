//! The control socket: a Unix stream socket that only root (or a configured group) can
//! open. One request line in, one JSON document out; `natwarden status` is its client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natwarden_wire::Protocol;
use serde::{Deserialize, Serialize};

use crate::state::protocol_from;

pub const DEFAULT_SOCKET: &str = "/run/natwarden/control.sock";
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: u64 = 4096;

/// What the admin asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Delete {
        client: IpAddr,
        protocol: Option<String>,
        internal_port: Option<u16>,
    },
}

impl Request {
    /// `CLIENT` or `CLIENT:PORT/PROTO`, as `natwarden status --delete` takes it.
    pub fn parse_delete(spec: &str) -> Result<Request, String> {
        let bad = || {
            format!("`{spec}` is not CLIENT or CLIENT:PORT/PROTO (e.g. 192.168.1.10:8080/tcp, [2001:db8::10]:8080/tcp)")
        };
        // An IPv6 client with a port is bracketed: [2001:db8::10]:8080/tcp.
        let (addr, rest) = if let Some(inner) = spec.strip_prefix('[') {
            let (a, r) = inner.split_once(']').ok_or_else(bad)?;
            (a, Some(r.strip_prefix(':').ok_or_else(bad)?))
        } else if spec.matches(':').count() > 1 {
            (spec, None)
        } else {
            match spec.split_once(':') {
                Some((a, r)) => (a, Some(r)),
                None => (spec, None),
            }
        };
        let client: IpAddr = addr.parse().map_err(|_| bad())?;
        let (protocol, internal_port) = match rest {
            None => (None, None),
            Some(r) => {
                let (port, proto) = r.split_once('/').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                protocol_from(proto).ok_or_else(bad)?;
                (Some(proto.to_string()), Some(port))
            }
        };
        Ok(Request::Delete {
            client,
            protocol,
            internal_port,
        })
    }

    /// The delete's target as the core takes it.
    pub fn delete_target(
        protocol: &Option<String>,
        port: Option<u16>,
    ) -> Option<Option<(Protocol, u16)>> {
        match (protocol, port) {
            (None, None) => Some(None),
            (Some(p), Some(port)) => protocol_from(p).map(|p| Some((p, port))),
            _ => None,
        }
    }
}

/// The listening socket, owned by the daemon.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    group: Option<u32>,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) with mode 0600, or 0660 and the given
    /// group so its members may query too.
    pub fn bind(path: &Path, group: Option<u32>) -> io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Create it unreachable, then open it up to exactly who may use it.
        // SAFETY: umask(2) has no preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            group,
        })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }

    /// The next waiting connection, if its peer may use the socket (root, our own user,
    /// or the configured group: checked with SO_PEERCRED as well as the file mode).
    pub fn accept(&self) -> Option<(UnixStream, Option<Request>)> {
        let (stream, _) = self.listener.accept().ok()?;
        if !self.peer_allowed(&stream) {
            return None;
        }
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
        let mut line = String::new();
        let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
        let request = match reader.read_line(&mut line) {
            Ok(_) => serde_json::from_str(line.trim()).ok(),
            Err(_) => None,
        };
        Some((stream, request))
    }

    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        // SAFETY: ucred is plain data; getsockopt fills at most `len` bytes of it.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        rc == 0 && (cred.uid == 0 || cred.uid == me || Some(cred.gid) == self.group)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn respond(mut stream: UnixStream, body: &serde_json::Value) {
    let _ = serde_json::to_writer(&mut stream, body);
    let _ = stream.write_all(b"\n");
}

/// The client side: one request, one JSON answer.
pub fn query(path: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the control socket {} (is natwarden serve running, and are you root?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT * 5))?;
    serde_json::to_writer(&mut stream, request)?;
    stream.write_all(b"\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("reading the daemon's answer")?;
    serde_json::from_str(answer.trim()).context("parsing the daemon's answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_specs_parse_or_name_the_format() {
        assert_eq!(
            Request::parse_delete("192.168.1.10:8080/tcp"),
            Ok(Request::Delete {
                client: IpAddr::from([192, 168, 1, 10]),
                protocol: Some("tcp".into()),
                internal_port: Some(8080)
            })
        );
        assert_eq!(
            Request::parse_delete("192.168.1.10"),
            Ok(Request::Delete {
                client: IpAddr::from([192, 168, 1, 10]),
                protocol: None,
                internal_port: None
            })
        );
        assert_eq!(
            Request::parse_delete("[2001:db8:1::10]:8080/udp"),
            Ok(Request::Delete {
                client: "2001:db8:1::10".parse().expect("v6"),
                protocol: Some("udp".into()),
                internal_port: Some(8080)
            })
        );
        assert_eq!(
            Request::parse_delete("2001:db8:1::10"),
            Ok(Request::Delete {
                client: "2001:db8:1::10".parse().expect("v6"),
                protocol: None,
                internal_port: None
            })
        );
        for bad in [
            "[2001:db8:1::10]8080/udp",
            "192.168.1.10:8080",
            "192.168.1.10:x/tcp",
            "192.168.1.10:80/sctp",
            "host",
        ] {
            assert!(Request::parse_delete(bad).is_err(), "{bad}");
        }
    }
}
