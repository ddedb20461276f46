//! `population`: one process answering NAT-PMP/PCP for a whole address range in a network
//! namespace (AnyIP), each address a different kind of gateway, with its ground truth.
//!
//! Each address of `--v4`/`--v6` gets a behaviour from `--mix` by the seeded hash in
//! [`mix::address_hash`] (splitmix64 over the seed and the address bits). The truth file
//! (a JSON line per validly answering address) is written before `ready` is printed;
//! SIGUSR1 and exit (SIGTERM/SIGINT) write the leftover file (a JSON line per live mapping).

mod args;
mod mix;
mod net;
mod population;
mod range;
mod truth;

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use args::Args;
use net::{Datagram, Outgoing, Socket, BATCH, DATAGRAM_LEN};
use population::Population;

// Every reply, up to a full-length PCP error echo, fits one datagram buffer.
const _: () = assert!(population::REPLY_BUF_LEN <= DATAGRAM_LEN);

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_dump(_: libc::c_int) {
    DUMP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM stop, SIGUSR1 dumps; without SA_RESTART, so that poll returns at once.
fn install_signal_handlers() -> io::Result<()> {
    let handlers: [(libc::c_int, extern "C" fn(libc::c_int)); 3] = [
        (libc::SIGINT, on_stop),
        (libc::SIGTERM, on_stop),
        (libc::SIGUSR1, on_dump),
    ];
    for (signal, handler) in handlers {
        // SAFETY: a zeroed sigaction with an async-signal-safe handler and an empty mask.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes a file whole: to a temporary name beside it, then renamed over it, so a reader
/// never sees half of it.
fn write_file(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut out = BufWriter::new(fs::File::create(&tmp)?);
    fill(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&tmp, path)
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("population: {message}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("population: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let start = Instant::now();
    let mut population =
        Population::new(args.seed, args.mix, args.v4, args.v6, args.sibling_offset);
    write_file(&args.truth, |out| truth::write_truth(&population, out))
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", args.truth.display())))?;
    let mut sockets = Vec::new();
    if args.v4.is_some() {
        sockets.push(Socket::bind(args.port, false)?);
    }
    if args.v6.is_some() {
        sockets.push(Socket::bind(args.port, true)?);
    }
    install_signal_handlers()?;
    let dump = |population: &Population| -> io::Result<()> {
        match &args.leftover {
            Some(path) => write_file(path, |out| {
                truth::write_leftover(population, start.elapsed(), out)
            })
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))),
            None => Ok(()),
        }
    };
    {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "ready")?;
        stdout.flush()?;
    }

    let mut bufs = Box::new([[0u8; DATAGRAM_LEN]; BATCH]);
    let mut replies_buf = Box::new([[0u8; DATAGRAM_LEN]; BATCH]);
    let mut received = [None::<Datagram>; BATCH];
    let mut outgoing = Vec::with_capacity(BATCH);
    let mut last_expiry = Duration::ZERO;
    while !STOP.load(Ordering::SeqCst) {
        if DUMP.swap(false, Ordering::SeqCst) {
            dump(&population)?;
        }
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of the length passed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (socket, fd) in sockets.iter_mut().zip(&fds) {
            if fd.revents == 0 {
                continue;
            }
            // Bounded, so one busy family cannot starve the other or the signals.
            for _ in 0..64 {
                let n = socket.recv_batch(&mut bufs, &mut received)?;
                if n == 0 {
                    break;
                }
                let now = start.elapsed();
                outgoing.clear();
                for (datagram, buf) in received[..n].iter().zip(bufs.iter()) {
                    let Some(d) = datagram else { continue };
                    let out = &mut replies_buf[outgoing.len()];
                    if let Some(reply) =
                        population.handle(now, d.source, d.destination, &buf[..d.len], out)
                    {
                        outgoing.push(Outgoing {
                            to: d.source,
                            from: reply.from,
                            len: reply.len,
                        });
                    }
                }
                socket.send_batch(&replies_buf[..], &outgoing);
                if n < BATCH {
                    break;
                }
            }
        }
        let now = start.elapsed();
        if now >= last_expiry + Duration::from_secs(1) {
            population.expire(now);
            last_expiry = now;
        }
    }
    dump(&population)
}
