//! Moves bytes between two connected TCP sockets until both directions
//! are done, in one task, never holding more than a bounded amount per
//! direction:
//!
//! - [`Mode::Splice`] (the paper's design): `splice(2)` from the source
//!   socket into a pipe and from the pipe into the destination socket; the
//!   bytes never reach user space. The pipe is sized once
//!   (`F_SETPIPE_SZ`) and reused for the connection's life.
//! - [`Mode::Copy`] (the paper's Figure 5a, for comparison): `read` into a
//!   buffer of the same size, `write` out of it.
//!
//! Both read only as much as the destination has room for (what is still
//! in the pipe or buffer counts): a slow reader closes the fast writer's
//! TCP window instead of growing the relay. A source's end (FIN) is passed
//! on as a half-close once everything before it was written (the paper's
//! translator lost half-closes); a reset on either side resets the other;
//! a connection idle for [`Limits::idle`] is reset on both sides.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// How bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Splice,
    Copy,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes in flight per direction (the pipe's or the buffer's size).
    pub per_direction: usize,
    /// A connection that moved nothing this long is reset.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { per_direction: 256 * 1024, idle: Duration::from_secs(600) }
    }
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both directions ended with a FIN.
    Closed,
    /// One side reset; the other was reset too.
    Reset,
    /// Nothing moved for [`Limits::idle`]; both sides were reset.
    Idle,
}

/// What a relayed connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Bytes from `a` to `b`, and from `b` to `a`.
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// The most bytes ever held in one direction at once.
    pub max_in_flight: usize,
    pub ending: Ending,
}

/// A relayed connection as it goes, for `flows` and the metrics: updated
/// at every read and write.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes written to `b` (from `a`), and to `a` (from `b`).
    pub a_to_b: Cell<u64>,
    pub b_to_a: Cell<u64>,
    /// Bytes held right now, a to b and b to a.
    pub held_a_to_b: Cell<usize>,
    pub held_b_to_a: Cell<usize>,
    /// The most bytes ever held in one direction at once.
    pub max_in_flight: Cell<usize>,
    /// Directions that saw their source's end (FIN).
    pub ends: Cell<u8>,
}

/// Relays between `a` and `b` until both directions are done.
pub async fn relay(a: TcpStream, b: TcpStream, mode: Mode, limits: Limits) -> io::Result<Report> {
    relay_with(a, b, mode, limits, &Progress::default()).await
}

/// [`relay`], reporting as it goes in `progress`.
pub async fn relay_with(
    a: TcpStream,
    b: TcpStream,
    mode: Mode,
    limits: Limits,
    progress: &Progress,
) -> io::Result<Report> {
    let last = Cell::new(Instant::now());
    let max = &progress.max_in_flight;
    let one = |src, dst, moved, held| Direction {
        src,
        dst,
        mode,
        cap: limits.per_direction,
        last: &last,
        max,
        moved,
        held_now: held,
        ends: &progress.ends,
    };
    let (ab, ba) = {
        let idle = async {
            loop {
                let quiet = last.get().elapsed();
                if quiet >= limits.idle {
                    return;
                }
                tokio::time::sleep(limits.idle - quiet).await;
            }
        };
        tokio::select! {
            r = async {
                tokio::join!(
                    one(&a, &b, &progress.a_to_b, &progress.held_a_to_b).run(),
                    one(&b, &a, &progress.b_to_a, &progress.held_b_to_a).run()
                )
            } => r,
            _ = idle => {
                abort(&a);
                abort(&b);
                let (a_to_b, b_to_a) = (progress.a_to_b.get(), progress.b_to_a.get());
                return Ok(Report { a_to_b, b_to_a, max_in_flight: max.get(), ending: Ending::Idle });
            }
        }
    };
    let (ab, ba) = (ab?, ba?);
    let ending = if ab.reset || ba.reset {
        abort(&a);
        abort(&b);
        Ending::Reset
    } else {
        Ending::Closed
    };
    Ok(Report { a_to_b: ab.bytes, b_to_a: ba.bytes, max_in_flight: max.get(), ending })
}

/// Makes the socket's close send a RST (SO_LINGER 0; the sockets close
/// when [`relay`] returns), and ends its reading side now, which wakes a
/// direction waiting on it without sending anything (a shutdown of the
/// sending side would send a FIN first).
pub fn abort(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    // SAFETY: shutting down a socket we hold.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RD) };
}

struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    mode: Mode,
    cap: usize,
    last: &'a Cell<Instant>,
    max: &'a Cell<usize>,
    moved: &'a Cell<u64>,
    held_now: &'a Cell<usize>,
    ends: &'a Cell<u8>,
}

struct Done {
    bytes: u64,
    reset: bool,
}

/// The bytes held between reading and writing: a pipe, or a buffer.
enum Hold {
    Pipe {
        r: OwnedFd,
        w: OwnedFd,
    },
    /// `data[start..end]` is held; the buffer is allocated zeroed once
    /// (pages the kernel hands out as they are touched) and never resized.
    Buf {
        data: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted)
}

impl Direction<'_> {
    /// Whether the connection is being reset (the end just read was the
    /// other direction's doing, not a FIN).
    fn aborted(&self) -> bool {
        socket2::SockRef::from(self.src).linger().ok().flatten() == Some(Duration::ZERO)
    }

    /// A reset on either socket: both are aborted, which also ends the
    /// other direction (its reads see the end).
    fn reset(&self, bytes: u64) -> Done {
        abort(self.src);
        abort(self.dst);
        Done { bytes, reset: true }
    }

    async fn run(self) -> io::Result<Done> {
        let mut hold = match self.mode {
            // Four times the bytes in slots: a pipe holds one slot per
            // page or piece of a page spliced in, and segments of 1448
            // bytes in pages of their own would fill a pipe of `cap`
            // bytes at a third of `cap`. The byte bound stays `cap`.
            Mode::Splice => pipe(self.cap.saturating_mul(4))?,
            Mode::Copy => Hold::Buf { data: vec![0; self.cap].into_boxed_slice(), start: 0, end: 0 },
        };
        let (mut held, mut bytes, mut eof) = (0usize, 0u64, false);
        // A pipe is full by its slots (one per page or piece of a page
        // spliced in) before it is full by bytes: splice then says EAGAIN
        // although the socket has data. That EAGAIN must not make tokio
        // forget the socket's readiness (no new edge would come while the
        // sender waits for our window), so it is told apart by the
        // socket's queue (FIONREAD) and reported as `StorageFull`: reading
        // then waits for the next drain. Only a really empty socket gives
        // up its readiness, inside `try_io`, whose snapshot is taken before
        // the syscall (data arriving meanwhile is not lost).
        let mut pipe_full = false;
        enum Act {
            Read,
            Write,
        }
        loop {
            if held == 0 && eof {
                if self.aborted() {
                    return Ok(Done { bytes, reset: true });
                }
                // Everything before the FIN is out: pass the FIN on.
                // SAFETY: shutting down a socket we hold.
                unsafe { libc::shutdown(self.dst.as_raw_fd(), libc::SHUT_WR) };
                return Ok(Done { bytes, reset: false });
            }
            // Read while there is room, write while there is something:
            // whichever the sockets allow first.
            let can_read = !eof && held < self.cap && !pipe_full;
            let act = tokio::select! {
                r = self.src.ready(Interest::READABLE), if can_read => { r?; Act::Read }
                r = self.dst.ready(Interest::WRITABLE), if held > 0 => { r?; Act::Write }
            };
            match act {
                Act::Read => {
                    let fd = self.src.as_raw_fd();
                    let room = self.cap - held;
                    let r = self.src.try_io(Interest::READABLE, || match fill(&mut hold, fd, room) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && held > 0 && queued(fd) > 0 => {
                            Err(io::ErrorKind::StorageFull.into())
                        }
                        other => other,
                    });
                    match r {
                        Ok(0) => {
                            eof = true;
                            self.ends.set(self.ends.get() + 1);
                        }
                        Ok(n) => {
                            held += n;
                            self.held_now.set(held);
                            self.max.set(self.max.get().max(held));
                            self.last.set(Instant::now());
                        }
                        Err(e) if e.kind() == io::ErrorKind::StorageFull => pipe_full = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if is_reset(&e) => return Ok(self.reset(bytes)),
                        Err(e) => return Err(e),
                    }
                }
                Act::Write => {
                    let fd = self.dst.as_raw_fd();
                    match self.dst.try_io(Interest::WRITABLE, || drain(&mut hold, fd, held)) {
                        Ok(n) => {
                            pipe_full = false;
                            held -= n;
                            bytes += n as u64;
                            self.held_now.set(held);
                            self.moved.set(bytes);
                            self.last.set(Instant::now());
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if is_reset(&e) => return Ok(self.reset(bytes)),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Bytes waiting in a socket's receive queue (FIONREAD).
fn queued(fd: RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n
}

fn pipe(size: usize) -> io::Result<Hold> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: an out-array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on our pipe. The kernel rounds up to pages; a size
    // above /proc/sys/fs/pipe-max-size fails and the default stays.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok(Hold::Pipe { r, w })
}

/// Moves up to `room` bytes from the socket into the hold; 0 at EOF.
fn fill(hold: &mut Hold, fd: RawFd, room: usize) -> io::Result<usize> {
    let n = match hold {
        // SAFETY: splice between descriptors we hold; no offsets.
        Hold::Pipe { w, .. } => unsafe {
            libc::splice(
                fd,
                std::ptr::null_mut(),
                w.as_raw_fd(),
                std::ptr::null_mut(),
                room,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        },
        Hold::Buf { data, start, end } => {
            // What was written goes: the held bytes move to the front when
            // the room asked for is not at the back.
            if data.len() - *end < room {
                data.copy_within(*start..*end, 0);
                *end -= *start;
                *start = 0;
            }
            let room = room.min(data.len() - *end);
            // SAFETY: reading into `room` bytes of our buffer after `end`.
            let n = unsafe { libc::read(fd, data[*end..].as_mut_ptr() as *mut _, room) };
            if n > 0 {
                *end += n as usize;
            }
            n
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Moves up to `held` bytes from the hold to the socket.
fn drain(hold: &mut Hold, fd: RawFd, held: usize) -> io::Result<usize> {
    let n = match hold {
        // SAFETY: splice between descriptors we hold; no offsets.
        Hold::Pipe { r, .. } => unsafe {
            libc::splice(
                r.as_raw_fd(),
                std::ptr::null_mut(),
                fd,
                std::ptr::null_mut(),
                held,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        },
        Hold::Buf { data, start, end } => {
            // SAFETY: writing bytes we hold; MSG_NOSIGNAL: a closed peer is
            // an error, not a signal.
            let n =
                unsafe { libc::send(fd, data[*start..*end].as_ptr() as *const _, *end - *start, libc::MSG_NOSIGNAL) };
            if n > 0 {
                *start += n as usize;
                if *start == *end {
                    (*start, *end) = (0, 0);
                }
            }
            n
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream as StdStream};

    use super::*;

    /// A client and a server on loopback with the relay between them:
    /// `client` and `server` run on their own threads with blocking
    /// sockets; returns the relay's report.
    fn through_relay(
        mode: Mode,
        limits: Limits,
        client: impl FnOnce(StdStream) + Send + 'static,
        server: impl FnOnce(StdStream) + Send + 'static,
    ) -> Report {
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();
        let (fa, ba) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let c = std::thread::spawn(move || client(StdStream::connect(fa).unwrap()));
        let s = std::thread::spawn(move || server(back.accept().unwrap().0));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let report = rt.block_on(async {
            let a = TcpStream::from_std({
                let s = front.accept().unwrap().0;
                s.set_nonblocking(true).unwrap();
                s
            })
            .unwrap();
            let b = TcpStream::connect(ba).await.unwrap();
            relay(a, b, mode, limits).await.unwrap()
        });
        c.join().unwrap();
        s.join().unwrap();
        report
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn bytes_cross_intact_both_ways_at_once_and_closes_pass_on() {
        for mode in [Mode::Splice, Mode::Copy] {
            let (up, down) = (pattern(20 << 20, 1), pattern(30 << 20, 2));
            let (up2, down2) = (up.clone(), down.clone());
            let r = through_relay(
                mode,
                Limits::default(),
                move |mut c| {
                    let mut r = c.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let mut got = Vec::new();
                        r.read_to_end(&mut got).unwrap();
                        got
                    });
                    c.write_all(&up2).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    assert!(reader.join().unwrap() == down2, "{mode:?}: download intact");
                },
                move |mut s| {
                    let mut w = s.try_clone().unwrap();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&down).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    assert!(got == up, "{mode:?}: upload intact");
                    writer.join().unwrap();
                },
            );
            assert_eq!((r.a_to_b, r.b_to_a, r.ending), (20 << 20, 30 << 20, Ending::Closed), "{mode:?}");
        }
    }

    #[test]
    fn a_half_closed_side_still_gets_the_whole_answer() {
        for mode in [Mode::Splice, Mode::Copy] {
            let answer = pattern(3 << 20, 7);
            let want = answer.clone();
            // The client sends its request and shuts its sending side; the
            // server answers only after the request's end.
            let r = through_relay(
                mode,
                Limits::default(),
                move |mut c| {
                    c.write_all(b"request").unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).unwrap();
                    assert!(got == want, "{mode:?}: the whole answer after the half-close");
                },
                move |mut s| {
                    let mut req = Vec::new();
                    s.read_to_end(&mut req).unwrap();
                    assert_eq!(req, b"request");
                    s.write_all(&answer).unwrap();
                },
            );
            assert_eq!(r.ending, Ending::Closed);
            // The server closing first: the client's upload still arrives.
            let upload = pattern(2 << 20, 9);
            let want = upload.clone();
            through_relay(
                mode,
                Limits::default(),
                move |mut c| {
                    let mut hello = [0u8; 5];
                    c.read_exact(&mut hello).unwrap();
                    let mut rest = Vec::new();
                    c.read_to_end(&mut rest).unwrap();
                    assert!(rest.is_empty(), "the server's FIN came through");
                    c.write_all(&upload).unwrap();
                },
                move |mut s| {
                    s.write_all(b"hello").unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    assert!(got == want, "{mode:?}: the upload after the server's half-close");
                },
            );
        }
    }

    #[test]
    fn a_reset_reaches_the_other_side() {
        for mode in [Mode::Splice, Mode::Copy] {
            let r = through_relay(
                mode,
                Limits::default(),
                move |mut c| {
                    c.write_all(b"x").unwrap();
                    let mut buf = [0u8; 16];
                    let e = loop {
                        match c.read(&mut buf) {
                            Ok(0) => panic!("{mode:?}: a FIN instead of the reset"),
                            Ok(_) => continue,
                            Err(e) => break e,
                        }
                    };
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{mode:?}");
                },
                |mut s| {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                    drop(s);
                },
            );
            assert_eq!(r.ending, Ending::Reset, "{mode:?}");
        }
    }

    #[test]
    fn a_slow_reader_holds_back_the_writer_and_the_relay_stays_bounded() {
        for mode in [Mode::Splice, Mode::Copy] {
            let limits = Limits { per_direction: 64 * 1024, ..Limits::default() };
            let r = through_relay(
                mode,
                limits,
                |mut c| {
                    // 4 MB at about 8 MB/s.
                    let mut buf = [0u8; 16 * 1024];
                    let mut n = 0;
                    while n < 4 << 20 {
                        n += c.read(&mut buf).unwrap();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                },
                |mut s| {
                    let _ = s.write_all(&pattern(4 << 20, 3));
                },
            );
            assert!(r.max_in_flight <= 64 * 1024, "{mode:?}: {} bytes in flight", r.max_in_flight);
            assert_eq!(r.b_to_a, 4 << 20);
        }
    }

    #[test]
    fn an_idle_connection_is_reset_on_both_sides() {
        let limits = Limits { idle: Duration::from_millis(300), ..Limits::default() };
        let t = Instant::now();
        let r = through_relay(
            Mode::Splice,
            limits,
            move |mut c| {
                let mut b = [0u8; 1];
                assert!(c.read(&mut b).is_err() || t.elapsed() >= Duration::from_millis(300));
            },
            move |mut s| {
                let mut b = [0u8; 1];
                assert!(s.read(&mut b).is_err() || t.elapsed() >= Duration::from_millis(300));
            },
        );
        assert_eq!(r.ending, Ending::Idle);
    }
}
