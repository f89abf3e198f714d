//! Raw IPv4 sockets: the agent's protocol-144 socket (receives the SAL
//! control packets the kernel programs pass up, and keeps the kernel from
//! answering SAL with ICMP protocol-unreachable) and a send-only socket
//! for injecting TCP resets into the local stack.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

pub struct RawSocket {
    sock: AsyncFd<Socket>,
}

impl RawSocket {
    /// A raw socket for `protocol`, with IP_HDRINCL: we write the IPv4
    /// header ourselves (the kernel fills in the checksum and length).
    pub fn new(protocol: i32) -> io::Result<Self> {
        let s = Socket::new(Domain::IPV4, Type::RAW.nonblocking().cloexec(), Some(Protocol::from(protocol)))?;
        s.set_header_included_v4(true)?;
        // The AsyncFd owns the socket, so the descriptor cannot be closed
        // while registered (what the deprecation warns about).
        #[allow(deprecated)]
        let sock = AsyncFd::new(s)?;
        Ok(RawSocket { sock })
    }

    /// Sends a complete IPv4 datagram to `dst`.
    pub fn send_to(&self, datagram: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        self.sock.get_ref().send_to(datagram, &SocketAddrV4::new(dst, 0).into()).map(|_| ())
    }

    /// Receives one datagram (IPv4 header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.sock.readable().await?;
            // SAFETY: a `[u8]` is a valid `[MaybeUninit<u8>]`; recv only writes.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match guard.try_io(|s| s.get_ref().recv(uninit)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
