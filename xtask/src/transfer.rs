//! Bulk transfers for the experiments: `xtask transfer-server` in the
//! instance's namespace and `xtask transfer` in the client's, plain TCP
//! sockets on both ends (what a legacy client and an ordinary server do).
//!
//! Each connection carries one transfer: the client sends a header
//! (direction, size, seed), then the sender writes `size` bytes of a
//! pattern that the seed determines and the receiver checks every byte of
//! it, so that an intact transfer is proven, not assumed. Goodput is
//! counted from the client sending the header to the receiver having the
//! last byte: the client's last read of a download, the server's answer
//! to an upload (sent once it has every byte, with its verdict).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const MAGIC: u32 = 0x584c_5446; // "XLTF"
/// The pattern repeats every this many bytes (a prime, so that it does
/// not line up with segment or buffer sizes).
const PATTERN_LEN: usize = (1 << 20) + 7;
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Server to client.
    Down,
    /// Client to server.
    Up,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Down => "download",
            Direction::Up => "upload",
        }
    }
}

/// The bytes a transfer with `seed` carries, one period of them.
fn pattern(seed: u64) -> Vec<u8> {
    // xorshift64*: fast, and a wrong byte anywhere is caught.
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(PATTERN_LEN + 8);
    while v.len() < PATTERN_LEN {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(PATTERN_LEN);
    v
}

fn send(s: &mut TcpStream, pat: &[u8], size: u64) -> Result<()> {
    let mut off = 0u64;
    while off < size {
        let at = (off % PATTERN_LEN as u64) as usize;
        let n = (PATTERN_LEN - at).min(CHUNK).min((size - off) as usize);
        s.write_all(&pat[at..at + n])?;
        off += n as u64;
    }
    Ok(())
}

/// Reads `size` bytes and checks them against the pattern; whether all
/// were there and right.
fn receive(s: &mut TcpStream, pat: &[u8], size: u64) -> Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let (mut off, mut intact) = (0u64, true);
    while off < size {
        let want = ((size - off) as usize).min(CHUNK);
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(false);
        }
        let mut done = 0;
        while done < n {
            let at = ((off + done as u64) % PATTERN_LEN as u64) as usize;
            let k = (PATTERN_LEN - at).min(n - done);
            intact &= buf[done..done + k] == pat[at..at + k];
            done += k;
        }
        off += n as u64;
    }
    Ok(intact)
}

/// Serves transfers on `port` until killed, one thread per connection.
pub fn serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listening on port {port}"))?;
    println!("transfer-server listening on {port}");
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        std::thread::spawn(move || {
            let _ = serve_one(s);
        });
    }
    Ok(())
}

fn serve_one(mut s: TcpStream) -> Result<()> {
    let mut h = [0u8; 21];
    s.read_exact(&mut h)?;
    let t0 = Instant::now();
    if u32::from_be_bytes(h[..4].try_into()?) != MAGIC {
        bail!("not a transfer");
    }
    let size = u64::from_be_bytes(h[5..13].try_into()?);
    let pat = pattern(u64::from_be_bytes(h[13..21].try_into()?));
    match h[4] {
        0 => send(&mut s, &pat, size)?,
        _ => {
            let intact = receive(&mut s, &pat, size)?;
            let ns = t0.elapsed().as_nanos() as u64;
            let mut answer = ns.to_be_bytes().to_vec();
            answer.push(u8::from(intact));
            s.write_all(&answer)?;
        }
    }
    // The peer closes first: its last read or our answer ends it.
    let mut rest = [0u8; 1];
    let _ = s.read(&mut rest);
    Ok(())
}

/// One transfer's result, as its receiver counted it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub bytes: u64,
    pub seconds: f64,
    pub intact: bool,
}

impl Outcome {
    pub fn mbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// One transfer of `size` bytes with `to` (the connection is made before
/// the clock starts: connection setup is the connections experiment's).
fn transfer(to: SocketAddr, dir: Direction, size: u64, seed: u64, timeout: Duration) -> Result<Outcome> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let pat = pattern(seed);
    let mut h = MAGIC.to_be_bytes().to_vec();
    h.push(u8::from(dir == Direction::Up));
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&seed.to_be_bytes());
    let t0 = Instant::now();
    s.write_all(&h)?;
    match dir {
        Direction::Down => {
            let intact = receive(&mut s, &pat, size)?;
            Ok(Outcome { bytes: size, seconds: t0.elapsed().as_secs_f64(), intact })
        }
        Direction::Up => {
            send(&mut s, &pat, size)?;
            // Done when the server says it has every byte: its own clock
            // would start late, with part of the upload already queued in
            // its socket before it read the header.
            let mut a = [0u8; 9];
            s.read_exact(&mut a).context("the server's count")?;
            Ok(Outcome { bytes: size, seconds: t0.elapsed().as_secs_f64(), intact: a[8] == 1 })
        }
    }
}

/// `count` transfers at once; prints one line per transfer
/// (`bytes seconds intact`) in the order they were started, or fails.
pub fn run(to: SocketAddr, dir: Direction, size: u64, count: u32, timeout: Duration) -> Result<()> {
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::from(i) + 1) ^ size;
            std::thread::spawn(move || transfer(to, dir, size, seed, timeout))
        })
        .collect();
    for h in handles {
        let o = h.join().map_err(|_| anyhow::anyhow!("a transfer thread panicked"))??;
        println!("{} {:.6} {}", o.bytes, o.seconds, if o.intact { "intact" } else { "CORRUPT" });
    }
    Ok(())
}

/// Parses [`run`]'s output.
pub fn parse(out: &str) -> Result<Vec<Outcome>> {
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [b, s, i] => Ok(Outcome { bytes: b.parse()?, seconds: s.parse()?, intact: *i == "intact" }),
                _ => bail!("unexpected transfer line {l:?}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_both_ways_arrive_intact_and_a_wrong_byte_is_caught() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve_one(s));
            }
        });
        for dir in [Direction::Down, Direction::Up] {
            let o = transfer(addr, dir, 3 * PATTERN_LEN as u64 + 12345, 7, Duration::from_secs(10)).unwrap();
            assert!(o.intact && o.bytes == 3 * PATTERN_LEN as u64 + 12345, "{dir:?}: {o:?}");
        }
        // The receiver's check is real: another seed's bytes fail it.
        let (a, b) = (pattern(1), pattern(2));
        assert_ne!(a[..64], b[..64]);
        assert_eq!(a.len(), PATTERN_LEN);
    }
}
