//! SIGTERM, SIGINT and SIGHUP as a readable file descriptor (signalfd), so the daemon's
//! single poll loop sees them between datagrams, never in the middle of a change.

use std::io;
#[cfg(feature = "client")]
use std::os::fd::BorrowedFd;
use std::os::fd::RawFd;

pub use crate::sys::poll_readable;
use crate::sys::{self, SignalFd};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
}

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the signals for this thread (call before any other thread exists) and
    /// opens a signalfd for them.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            fd: SignalFd::new(&[sys::SIGTERM, sys::SIGINT, sys::SIGHUP])?,
        })
    }

    /// SIGTERM and SIGINT alone (`natwarden map --keep`: its mapping is removed on
    /// either; SIGHUP keeps its default action).
    #[cfg(feature = "client")]
    pub fn stop_only() -> io::Result<Signals> {
        Ok(Signals {
            fd: SignalFd::new(&[sys::SIGTERM, sys::SIGINT])?,
        })
    }

    #[cfg(feature = "client")]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.raw_fd()
    }

    /// The next pending signal, if any.
    pub fn next(&self) -> Option<Signal> {
        loop {
            match self.fd.next()? {
                sys::SIGTERM | sys::SIGINT => return Some(Signal::Terminate),
                sys::SIGHUP => return Some(Signal::Reload),
                _ => continue,
            }
        }
    }
}
