//! Raw IPv4 sockets: the agent's protocol-144 socket (receives the SAL
//! control packets the kernel programs pass up, and keeps the kernel from
//! answering SAL with ICMP protocol-unreachable) and a send-only socket
//! for injecting TCP resets into the local stack.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

pub struct RawSocket {
    fd: AsyncFd<OwnedFd>,
}

impl RawSocket {
    /// A raw socket for `protocol`, with IP_HDRINCL: we write the IPv4
    /// header ourselves (the kernel fills in the checksum and length).
    pub fn new(protocol: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffer.
        let r = unsafe {
            libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &one as *const _ as *const libc::c_void, 4)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // The AsyncFd owns the descriptor, so it cannot be closed under it.
        #[allow(deprecated)]
        let fd = AsyncFd::new(owned)?;
        Ok(RawSocket { fd })
    }

    fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Sends a complete IPv4 datagram to `dst`.
    pub fn send_to(&self, datagram: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: valid fd, buffer and address.
        let n = unsafe {
            libc::sendto(
                self.raw(),
                datagram.as_ptr() as *const libc::c_void,
                datagram.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram (IPv4 header included).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
    }
}
