//! One UDP socket per source address, connected to the gateway's NAT-PMP port, and a
//! small receiving thread per socket that hands parsed replies to the sender's channel.
//! (std has no poll(); blocked threads cost nothing until a reply wakes one.)

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use natwarden_wire::natpmp::{self, Response};

/// How often a blocked receiver looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

pub enum Event {
    Reply {
        source: usize,
        response: Result<Response, natpmp::ParseError>,
        at: Instant,
    },
    /// A socket error, e.g. ICMP port unreachable (nothing listens on the gateway).
    Error { source: usize, error: io::Error },
}

pub struct Sources {
    sockets: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sources {
    /// Binds one socket to each address (they must be local here, e.g. through an AnyIP
    /// `local` route) and starts its receiver.
    pub fn open(
        addresses: &[Ipv4Addr],
        gateway: Ipv4Addr,
    ) -> io::Result<(Sources, Receiver<Event>)> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut sources = Sources {
            sockets: Vec::with_capacity(addresses.len()),
            stop: stop.clone(),
            threads: Vec::with_capacity(addresses.len()),
        };
        for (source, &addr) in addresses.iter().enumerate() {
            let socket = UdpSocket::bind((addr, 0)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding {addr}: {e} (is the range local here? `ip route add local RANGE dev lo`)"),
                )
            })?;
            socket.connect(SocketAddr::from((gateway, natpmp::SERVER_PORT)))?;
            let receiver = socket.try_clone()?;
            receiver.set_read_timeout(Some(POLL))?;
            let (tx, stop) = (tx.clone(), stop.clone());
            let thread = thread::Builder::new()
                .name(format!("rx-{addr}"))
                .stack_size(64 * 1024)
                .spawn(move || receive(source, &receiver, &tx, &stop))?;
            sources.sockets.push(socket);
            sources.threads.push(thread);
        }
        Ok((sources, rx))
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn send(&self, source: usize, datagram: &[u8]) -> io::Result<()> {
        self.sockets[source].send(datagram).map(drop)
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn receive(source: usize, socket: &UdpSocket, tx: &Sender<Event>, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let event = match socket.recv(&mut buf) {
            Ok(n) => Event::Reply {
                source,
                response: Response::parse(&buf[..n]),
                at: Instant::now(),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Event::Error { source, error: e }
            }
            Err(error) => {
                let _ = tx.send(Event::Error { source, error });
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
