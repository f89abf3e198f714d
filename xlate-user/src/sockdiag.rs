//! Destroying local TCP sockets through sock_diag (`SOCK_DESTROY`, what
//! `ss -K` does).
//!
//! Stopping host mode for good must reset the connections of this host's
//! own applications. An injected RST is accepted only at exactly the
//! socket's next expected sequence number, which the datapath can know
//! only approximately while segments are still in flight; destroying the
//! socket is exact: the application gets an error at once, and the kernel
//! sends its own reset (with its own sequence numbers) to the peer.
//! Needs `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN.

use std::net::{IpAddr, SocketAddrV4};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// A sock_diag socket of the calling network namespace.
pub struct SockDiag(Socket);

/// What became of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Yes,
    /// No socket of this namespace has that 4-tuple (at a gateway, the
    /// client's TCP end is elsewhere).
    NoSuchSocket,
}

impl SockDiag {
    pub fn open() -> Result<Self> {
        let mut s = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
        s.bind_auto().context("binding the sock_diag socket")?;
        s.connect(&SocketAddr::new(0, 0)).context("connecting the sock_diag socket")?;
        Ok(SockDiag(s))
    }

    /// Destroys the TCP socket bound to `local` and connected to `peer`.
    pub fn destroy_tcp(&self, local: SocketAddrV4, peer: SocketAddrV4) -> Result<Destroyed> {
        let req = InetRequest {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: local.port(),
                destination_port: peer.port(),
                source_address: IpAddr::V4(*local.ip()),
                destination_address: IpAddr::V4(*peer.ip()),
                interface_id: 0,
                // All ones: match by the 4-tuple alone (INET_DIAG_NOCOOKIE).
                cookie: [0xff; 8],
            },
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut msg = NetlinkMessage::new(header, SockDiagDestroy::new(SockDiagMessage::InetRequest(req)).into());
        msg.finalize();
        let mut tx = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut tx);
        self.0.send(&tx, 0).context("sending SOCK_DESTROY")?;
        let mut rx = Vec::with_capacity(4096);
        let n = self.0.recv(&mut rx, 0).context("reading the SOCK_DESTROY answer")?;
        let m = NetlinkMessage::<SockDiagDestroy>::deserialize(&rx[..n])
            .map_err(|e| anyhow!("malformed sock_diag answer: {e}"))?;
        match m.payload {
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                None => Ok(Destroyed::Yes),
                Some(libc::ENOENT) => Ok(Destroyed::NoSuchSocket),
                Some(libc::EOPNOTSUPP) => {
                    bail!("destroying {local} -> {peer}: this kernel lacks CONFIG_INET_DIAG_DESTROY")
                }
                Some(code) => Err(std::io::Error::from_raw_os_error(code))
                    .with_context(|| format!("destroying the TCP socket {local} -> {peer}")),
            },
            other => bail!("unexpected sock_diag answer to SOCK_DESTROY: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// Needs root (CAP_NET_ADMIN); loopback of the test's own namespace.
    #[test]
    fn a_destroyed_socket_reports_an_error_and_its_peer_sees_a_reset() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let local = match client.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let peer = match client.peer_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let diag = SockDiag::open().unwrap();
        assert_eq!(diag.destroy_tcp(local, peer).unwrap(), Destroyed::Yes);
        assert_eq!(diag.destroy_tcp(local, peer).unwrap(), Destroyed::NoSuchSocket);
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).expect_err("the peer must see a reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        let mut c = &client;
        let err = c.read(&mut buf).expect_err("the destroyed socket must report its abort");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
    }
}
