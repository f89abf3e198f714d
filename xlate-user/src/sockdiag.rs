//! Destroying local TCP sockets through sock_diag (`SOCK_DESTROY`, what
//! `ss -K` does).
//!
//! Stopping host mode for good must reset the connections of this host's
//! own applications. An injected RST is accepted only at exactly the
//! socket's next expected sequence number, which the datapath can know
//! only approximately while segments are still in flight; destroying the
//! socket is exact: the application gets an error at once, and the kernel
//! sends its own reset (with its own sequence numbers) to the peer.
//! Host mode also ends the TIME_WAIT of its serving sockets as their flows
//! are freed (see `ControlPlane::end_time_wait`).
//!
//! A socket is always looked up first and then destroyed by its cookie:
//! the kernel's lookup by 4-tuple is the one that delivers packets, so when
//! no connection has the tuple it finds the *listener* on the local port,
//! and a destroy by tuple alone would close the application's listening
//! socket. Needs `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN.

use std::net::{IpAddr, SocketAddrV4};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_TCP, TCP_TIME_WAIT},
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
    /// The socket is there but not in the state asked for (its TCP state,
    /// as `include/net/tcp_states.h` numbers them): left alone.
    LeftInState(u8),
}

/// A connection's socket as sock_diag reported it.
struct Found {
    state: u8,
    cookie: [u8; 8],
}

/// All ones: match by the 4-tuple alone (INET_DIAG_NOCOOKIE).
const NO_COOKIE: [u8; 8] = [0xff; 8];

fn request(local: SocketAddrV4, peer: SocketAddrV4, cookie: [u8; 8]) -> InetRequest {
    InetRequest {
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
            cookie,
        },
    }
}

impl SockDiag {
    pub fn open() -> Result<Self> {
        let mut s = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
        s.bind_auto().context("binding the sock_diag socket")?;
        s.connect(&SocketAddr::new(0, 0)).context("connecting the sock_diag socket")?;
        Ok(SockDiag(s))
    }

    /// Destroys the TCP socket bound to `local` and connected to `peer`,
    /// whatever its state.
    pub fn destroy_tcp(&self, local: SocketAddrV4, peer: SocketAddrV4) -> Result<Destroyed> {
        self.destroy_if(local, peer, |_| true)
    }

    /// Destroys that socket only if it is in TIME_WAIT.
    pub fn end_time_wait(&self, local: SocketAddrV4, peer: SocketAddrV4) -> Result<Destroyed> {
        self.destroy_if(local, peer, |state| state == TCP_TIME_WAIT)
    }

    fn destroy_if(&self, local: SocketAddrV4, peer: SocketAddrV4, want: impl Fn(u8) -> bool) -> Result<Destroyed> {
        let Some(found) = self.find(local, peer)? else {
            return Ok(Destroyed::NoSuchSocket);
        };
        if !want(found.state) {
            return Ok(Destroyed::LeftInState(found.state));
        }
        let msg = SockDiagDestroy::new(SockDiagMessage::InetRequest(request(local, peer, found.cookie)));
        match self.ask::<SockDiagDestroy>(msg.into(), NLM_F_REQUEST | NLM_F_ACK, "SOCK_DESTROY")? {
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                None => Ok(Destroyed::Yes),
                // Gone since the lookup (closed, or its TIME_WAIT ran out).
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

    /// The connection with exactly this 4-tuple, if there is one (never
    /// the listener the kernel's lookup falls back to).
    fn find(&self, local: SocketAddrV4, peer: SocketAddrV4) -> Result<Option<Found>> {
        let msg = SockDiagMessage::InetRequest(request(local, peer, NO_COOKIE));
        match self.ask::<SockDiagMessage>(msg.into(), NLM_F_REQUEST, "SOCK_DIAG_BY_FAMILY")? {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let id = &r.header.socket_id;
                let exact = id.source_port == local.port()
                    && id.destination_port == peer.port()
                    && id.source_address == IpAddr::V4(*local.ip())
                    && id.destination_address == IpAddr::V4(*peer.ip());
                Ok(exact.then_some(Found { state: r.header.state, cookie: id.cookie }))
            }
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                Some(libc::ENOENT) => Ok(None),
                Some(code) => Err(std::io::Error::from_raw_os_error(code))
                    .with_context(|| format!("looking up the TCP socket {local} -> {peer}")),
                None => bail!("sock_diag acknowledged a lookup of {local} -> {peer} without an answer"),
            },
            other => bail!("unexpected sock_diag answer to a lookup of {local} -> {peer}: {other:?}"),
        }
    }

    /// Sends one request and reads its one answer.
    fn ask<T>(&self, payload: NetlinkPayload<T>, flags: u16, what: &str) -> Result<NetlinkPayload<T>>
    where
        T: netlink_packet_core::NetlinkSerializable + netlink_packet_core::NetlinkDeserializable + std::fmt::Debug,
    {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut msg = NetlinkMessage::new(header, payload);
        msg.finalize();
        let mut tx = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut tx);
        self.0.send(&tx, 0).with_context(|| format!("sending {what}"))?;
        let mut rx = Vec::with_capacity(8192);
        let n = self.0.recv(&mut rx, 0).with_context(|| format!("reading the answer to {what}"))?;
        let m = NetlinkMessage::<T>::deserialize(&rx[..n])
            .map_err(|e| anyhow!("malformed sock_diag answer to {what}: {e}"))?;
        Ok(m.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    fn v4(a: SocketAddr) -> SocketAddrV4 {
        match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => panic!("{a}: loopback v4 expected"),
        }
    }

    /// A listener on loopback of the test's own namespace and one
    /// connection to it (client, server); `None` without root, which
    /// sock_diag's destroy needs (CAP_NET_ADMIN).
    fn connected() -> Option<(TcpListener, TcpStream, TcpStream)> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        Some((l, client, server))
    }

    #[test]
    fn a_destroyed_socket_reports_an_error_and_its_peer_sees_a_reset() {
        let Some((_l, client, mut server)) = connected() else { return };
        let (local, peer) = (v4(client.local_addr().unwrap()), v4(client.peer_addr().unwrap()));
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

    /// A server that closed first holds its side in TIME_WAIT; destroying
    /// it ends the TIME_WAIT (host mode does so as a flow is freed).
    #[test]
    fn a_time_wait_socket_is_destroyed() {
        let Some((l, client, server)) = connected() else { return };
        let (local, peer) = (v4(server.local_addr().unwrap()), v4(server.peer_addr().unwrap()));
        drop(server);
        let mut buf = [0u8; 8];
        assert_eq!((&client).read(&mut buf).unwrap(), 0, "the server's FIN");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let diag = SockDiag::open().unwrap();
        assert_eq!(diag.end_time_wait(local, peer).unwrap(), Destroyed::Yes);
        // Gone: the kernel's lookup now falls back to the listener, which
        // must be left alone and still take connections.
        assert_eq!(diag.end_time_wait(local, peer).unwrap(), Destroyed::NoSuchSocket);
        assert_eq!(diag.destroy_tcp(local, peer).unwrap(), Destroyed::NoSuchSocket);
        let again = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        // A live connection is not in TIME_WAIT: left as it is.
        let (local, peer) = (v4(again.peer_addr().unwrap()), v4(again.local_addr().unwrap()));
        assert_eq!(diag.end_time_wait(local, peer).unwrap(), Destroyed::LeftInState(1));
    }
}
