//! The control socket: a Unix stream socket that only root (or a configured group) can
//! open. One request line in, one JSON document out; `natwarden status` is its client.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natwarden_wire::Protocol;
use serde::{Deserialize, Serialize};

use tracing::{info, warn};

use crate::state::protocol_from;
use crate::sys::{self, Epoll, EpollOp};

pub const DEFAULT_SOCKET: &str = "/run/natwarden/control.sock";
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 4096;

/// What the admin asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    Delete(DeleteTarget),
}

/// The mappings an admin deletes: all of a client's, or one (internal port and
/// protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteTarget {
    pub client: IpAddr,
    pub port: Option<(u16, Protocol)>,
}

/// A request line as it travels: the admin's words, checked by [`Request::from_line`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum WireRequest {
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
        let port = match rest {
            None => None,
            Some(r) => {
                let (port, proto) = r.split_once('/').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                Some((port, protocol_from(proto).ok_or_else(bad)?))
            }
        };
        Ok(Request::Delete(DeleteTarget { client, port }))
    }

    /// One request line, as the daemon reads it; `Err` is the answer that says why not.
    pub fn from_line(line: &[u8]) -> Result<Request, &'static str> {
        let wire = std::str::from_utf8(line)
            .ok()
            .and_then(|l| serde_json::from_str(l.trim()).ok())
            .ok_or("unreadable request")?;
        match wire {
            WireRequest::Status => Ok(Request::Status),
            WireRequest::Delete {
                client,
                protocol,
                internal_port,
            } => {
                const BOTH: &str = "give both protocol and internal_port, or neither";
                let port = match (protocol, internal_port) {
                    (None, None) => None,
                    (Some(p), Some(port)) => Some((port, protocol_from(&p).ok_or(BOTH)?)),
                    _ => return Err(BOTH),
                };
                Ok(Request::Delete(DeleteTarget { client, port }))
            }
        }
    }

    fn to_wire(self) -> WireRequest {
        match self {
            Request::Status => WireRequest::Status,
            Request::Delete(DeleteTarget { client, port }) => WireRequest::Delete {
                client,
                protocol: port.map(|(_, p)| p.name().to_string()),
                internal_port: port.map(|(n, _)| n),
            },
        }
    }
}

/// How long one connection may take, from accept to the last byte of the reply. A
/// client that trickles its request or never reads the reply is dropped after this;
/// the daemon never waits for it (every socket is non-blocking).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3);
/// Connections served at once; beyond this, new ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// After a failing accept (EMFILE, ENFILE, ENOBUFS...), the listener is left alone
/// this long instead of being retried on every wake-up (which would spin the loop).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
const LISTENER: u64 = u64::MAX;

/// Identifies a connection whose request is waiting for [`ControlServer::reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(u64);

struct Connection {
    stream: UnixStream,
    deadline: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// The request was read (and handed out): now only the reply is written.
    replying: bool,
}

/// The listening socket and its connections, owned by the daemon. Everything is
/// driven by one epoll instance whose fd the daemon polls with its other fds.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    group: Option<u32>,
    epoll: Epoll,
    connections: HashMap<u64, Connection>,
    /// Whether the listener is registered with the epoll instance (it is taken out
    /// while accepting fails or all connection slots are busy).
    listening: bool,
    accept_paused_until: Option<Instant>,
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
        let old = sys::umask(0o177);
        let bound = UnixListener::bind(path);
        sys::umask(old);
        let listener = bound?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let mut server = ControlServer {
            listener,
            path: path.to_path_buf(),
            group,
            epoll,
            connections: HashMap::new(),
            listening: false,
            accept_paused_until: None,
        };
        server.listen(true)?;
        Ok(server)
    }

    /// The fd to poll for readability: the epoll instance, ready whenever the listener
    /// or a connection is.
    pub fn raw_fd(&self) -> RawFd {
        self.epoll.raw_fd()
    }

    /// When [`ControlServer::service`] must run even if nothing became ready: a
    /// connection's deadline, or the end of an accept back-off.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min()
    }

    /// Does whatever I/O is possible without blocking: drops connections past their
    /// deadline, accepts, reads requests and writes replies. Returns the requests read
    /// completely (`Err`: the answer to an unreadable one), each to be answered with [`ControlServer::reply`].
    pub fn service(&mut self, now: Instant) -> Vec<(ConnectionId, Result<Request, &'static str>)> {
        self.expire(now);
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
        self.update_listening();
        let mut ready = Vec::new();
        for (token, flags) in self.epoll.ready().unwrap_or_default() {
            if token == LISTENER {
                self.accept_all(now);
            } else {
                self.progress(token, flags, &mut ready);
            }
        }
        self.update_listening();
        ready
    }

    /// Queues `body` as the answer to `id` and writes as much as the socket takes now;
    /// the rest goes out as the client reads, within its deadline.
    pub fn reply(&mut self, id: ConnectionId, body: &serde_json::Value) {
        let Some(c) = self.connections.get_mut(&id.0) else {
            return;
        };
        c.output.clear();
        if serde_json::to_writer(&mut c.output, body).is_err() {
            self.close(id.0);
            return;
        }
        c.output.push(b'\n');
        c.sent = 0;
        self.flush(id.0);
        if self.connections.contains_key(&id.0) {
            // Wait for room in the socket buffer, no longer for input.
            let _ = self.epoll_ctl(EpollOp::Modify, id.0, sys::EPOLLOUT);
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            let what = match self.connections.get(&token) {
                Some(c) if c.replying => "its reply was not read",
                _ => "no complete request arrived",
            };
            info!(
                "control connection dropped: {what} within {} s",
                CONNECTION_DEADLINE.as_secs()
            );
            self.close(token);
        }
    }

    fn accept_all(&mut self, now: Instant) {
        while self.connections.len() < MAX_CONNECTIONS {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) =>
                {
                    continue
                }
                Err(e) => {
                    // EMFILE and friends leave the connection in the backlog, so the
                    // listener stays readable: stop watching it for a while.
                    warn!(
                        "accepting a control connection failed: {e}; pausing the control socket for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    self.update_listening();
                    return;
                }
            };
            if !self.peer_allowed(&stream) || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = stream.as_raw_fd() as u64;
            if self.epoll_ctl(EpollOp::Add, token, sys::EPOLLIN).is_err() {
                continue;
            }
            self.connections.insert(
                token,
                Connection {
                    stream,
                    deadline: now + CONNECTION_DEADLINE,
                    input: Vec::new(),
                    output: Vec::new(),
                    sent: 0,
                    replying: false,
                },
            );
        }
    }

    /// Reads what a connection has sent, or writes what it can take of its reply.
    fn progress(
        &mut self,
        token: u64,
        flags: u32,
        ready: &mut Vec<(ConnectionId, Result<Request, &'static str>)>,
    ) {
        let Some(c) = self.connections.get_mut(&token) else {
            return;
        };
        if c.replying {
            if flags & (sys::EPOLLERR | sys::EPOLLHUP) != 0 {
                self.close(token);
            } else {
                self.flush(token);
            }
            return;
        }
        let mut buf = [0u8; 1024];
        let complete = loop {
            match (&c.stream).read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.contains(&b'\n') || c.input.len() >= MAX_REQUEST {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        };
        if !complete {
            return;
        }
        c.replying = true;
        let line = c.input.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let request = Request::from_line(line);
        // Nothing more is read; wait for the daemon's answer.
        let _ = self.epoll_ctl(EpollOp::Modify, token, 0);
        ready.push((ConnectionId(token), request));
    }

    fn flush(&mut self, token: u64) {
        let Some(c) = self.connections.get_mut(&token) else {
            return;
        };
        while c.sent < c.output.len() {
            match (&c.stream).write(&c.output[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // All written, or the peer is gone.
        self.close(token);
    }

    fn close(&mut self, token: u64) {
        if let Some(c) = self.connections.remove(&token) {
            // Before the fd closes, so the number cannot be reused under epoll.
            let _ = self.epoll_ctl(EpollOp::Delete, token, 0);
            drop(c);
        }
    }

    /// Watches the listener only while a connection could be accepted.
    fn update_listening(&mut self) {
        let want = self.accept_paused_until.is_none() && self.connections.len() < MAX_CONNECTIONS;
        if want != self.listening {
            let _ = self.listen(want);
        }
    }

    fn listen(&mut self, on: bool) -> io::Result<()> {
        let op = if on { EpollOp::Add } else { EpollOp::Delete };
        self.epoll
            .control(op, self.listener.as_raw_fd(), sys::EPOLLIN, LISTENER)?;
        self.listening = on;
        Ok(())
    }

    fn epoll_ctl(&self, op: EpollOp, token: u64, events: u32) -> io::Result<()> {
        // The token of a connection is its fd.
        let fd =
            RawFd::try_from(token).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.epoll.control(op, fd, events, token)
    }

    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        let me = sys::effective_uid();
        sys::peer_credentials(stream.as_fd())
            .is_ok_and(|c| c.uid == 0 || c.uid == me || Some(c.gid) == self.group)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
    serde_json::to_writer(&mut stream, &request.to_wire())?;
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
            Ok(Request::Delete(DeleteTarget {
                client: IpAddr::from([192, 168, 1, 10]),
                port: Some((8080, Protocol::Tcp)),
            }))
        );
        assert_eq!(
            Request::parse_delete("192.168.1.10"),
            Ok(Request::Delete(DeleteTarget {
                client: IpAddr::from([192, 168, 1, 10]),
                port: None,
            }))
        );
        assert_eq!(
            Request::parse_delete("[2001:db8:1::10]:8080/udp"),
            Ok(Request::Delete(DeleteTarget {
                client: "2001:db8:1::10".parse().expect("v6"),
                port: Some((8080, Protocol::Udp)),
            }))
        );
        assert_eq!(
            Request::parse_delete("2001:db8:1::10"),
            Ok(Request::Delete(DeleteTarget {
                client: "2001:db8:1::10".parse().expect("v6"),
                port: None,
            }))
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

    /// The typed request goes out and comes back as the same JSON line as before.
    #[test]
    fn requests_keep_their_json_and_bad_ones_get_their_answer() {
        let one = Request::parse_delete("192.168.1.10:8080/tcp").expect("parses");
        let line = serde_json::to_string(&one.to_wire()).expect("json");
        assert_eq!(
            line,
            r#"{"delete":{"client":"192.168.1.10","protocol":"tcp","internal_port":8080}}"#
        );
        assert_eq!(Request::from_line(line.as_bytes()), Ok(one));
        let all = Request::parse_delete("192.168.1.10").expect("parses");
        let line = serde_json::to_string(&all.to_wire()).expect("json");
        assert_eq!(
            line,
            r#"{"delete":{"client":"192.168.1.10","protocol":null,"internal_port":null}}"#
        );
        assert_eq!(Request::from_line(line.as_bytes()), Ok(all));
        assert_eq!(
            serde_json::to_string(&Request::Status.to_wire()).expect("json"),
            r#""status""#
        );
        assert_eq!(Request::from_line(b"\"status\"\n"), Ok(Request::Status));
        assert_eq!(Request::from_line(b"{]"), Err("unreadable request"));
        for half in [
            r#"{"delete":{"client":"192.168.1.10","protocol":"tcp","internal_port":null}}"#,
            r#"{"delete":{"client":"192.168.1.10","protocol":"sctp","internal_port":80}}"#,
        ] {
            assert_eq!(
                Request::from_line(half.as_bytes()),
                Err("give both protocol and internal_port, or neither")
            );
        }
    }
}
