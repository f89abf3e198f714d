//! Small socket programs the tests run as unmodified applications (python3):
//! each takes ADDRESS PORT and prints what it saw, so a test can wait for
//! a line. Servers bind ADDRESS (0.0.0.0 for any); clients connect to it.

/// Accepts one connection and reads until EOF or reset: prints
/// "listening", then "server saw EOF" or "server saw reset".
pub const PATIENT_SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(5); print("listening", flush=True)
c, _ = l.accept(); c.settimeout(10)
try:
    while c.recv(100): pass
    print("server saw EOF", flush=True)
except ConnectionResetError:
    print("server saw reset", flush=True)
"#;

/// Accepts one connection, reads a byte and aborts it (RST).
pub const ABORTING_SERVER: &str = r#"
import socket, struct, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(5); print("listening", flush=True)
c, _ = l.accept(); c.recv(1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
"#;

/// Connects, sends a byte, aborts (RST); prints "aborted".
pub const ABORTING_CLIENT: &str = r#"
import socket, struct, time, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"x"); time.sleep(0.3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close(); print("aborted", flush=True)
"#;

/// Connects, sends a byte and waits: prints "client saw EOF", "client got
/// data" or "client saw reset".
pub const PATIENT_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"x")
try:
    d = s.recv(100)
    print("client saw EOF" if not d else "client got data", flush=True)
except ConnectionResetError:
    print("client saw reset", flush=True)
"#;

/// Sends an HTTP/1.0 GET for PATH (argv 3) and reads the whole answer;
/// prints the SHA-256 of the body. Options after the path:
/// `half-close` shuts the sending side down right after the request (a
/// FIN before the answer); `ip-options` puts IP options (NOP, NOP, NOP,
/// end) on every packet.
pub const GET_CLIENT: &str = r#"
import hashlib, socket, sys
s = socket.socket()
if "ip-options" in sys.argv[4:]:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))
s.settimeout(20)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(("GET %s HTTP/1.0\r\n\r\n" % sys.argv[3]).encode())
if "half-close" in sys.argv[4:]:
    s.shutdown(socket.SHUT_WR)
data = b""
while True:
    d = s.recv(1 << 16)
    if not d: break
    data += d
print(hashlib.sha256(data.split(b"\r\n\r\n", 1)[1]).hexdigest(), flush=True)
"#;

/// Two HTTP/1.0 GETs for PATH (argv 3) from one source port (argv 4), the
/// second as soon as the port is free again: the server closes first, so
/// this end keeps no TIME_WAIT and its port is free once its own FIN is
/// acknowledged. The second waits 1.5 s (argv 5) between connecting and
/// asking: a translator that had folded it into the first connection's
/// lingering state would have freed that state under it by then. Prints
/// both bodies.
pub const PORT_REUSING_CLIENT: &str = r#"
import errno, socket, sys, time
host, port, path, src, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
def get(wait):
    deadline = time.monotonic() + 2
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(10)
        s.bind(("0.0.0.0", src))
        try:
            s.connect((host, port))
            break
        except OSError as e:
            # The last connection's socket still waits for its FIN's ACK.
            s.close()
            if e.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline: raise
            time.sleep(0.005)
    time.sleep(wait)
    s.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
    data = b""
    while True:
        d = s.recv(1 << 16)
        if not d: break
        data += d
    s.close()
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()
print(get(0), get(pause), flush=True)
"#;

/// Accepts one connection, says "bye" and shuts its sending side down at
/// once (it closes first), then reads to the end: prints "listening", then
/// "server got N SHA256".
pub const EARLY_CLOSING_SERVER: &str = r#"
import hashlib, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(5); print("listening", flush=True)
c, _ = l.accept(); c.settimeout(20)
c.sendall(b"bye"); c.shutdown(socket.SHUT_WR)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print("server got", n, h.hexdigest(), flush=True)
"#;

/// Connects, waits for the server's end (it closes first), then uploads
/// BYTES (argv 3) generated from SEED (argv 4) as `generated_sha256`
/// makes them, and closes: prints "client got b'bye'" first. With SECONDS
/// (argv 5), the upload is spread evenly over that long, 10 000 bytes at a
/// time (chunks of a multiple of 4 bytes keep Python's stream the same).
pub const LATE_UPLOADING_CLIENT: &str = r#"
import random, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
got = b""
while True:
    d = s.recv(100)
    if not d: break
    got += d
print("client got", got, flush=True)
n, r = int(sys.argv[3]), random.Random(int(sys.argv[4]))
spread = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
step = 10000 if spread else 1 << 20
pause = spread * step / n if spread else 0.0
while n > 0:
    k = min(n, step)
    s.sendall(r.randbytes(k))
    n -= k
    time.sleep(pause)
s.close()
"#;

/// Opens N (argv 3) connections at once, then sends a GET /who on each,
/// then reads every answer: prints the number of answers that named an
/// instance.
pub const MANY_AT_ONCE: &str = r#"
import socket, sys
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) for _ in range(int(sys.argv[3]))]
for s in socks:
    s.sendall(b"GET /who HTTP/1.0\r\n\r\n")
ok = 0
for s in socks:
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    if data.split(b"\r\n\r\n", 1)[-1].strip().startswith(b"10.10.0."): ok += 1
    s.close()
print(ok, flush=True)
"#;

/// Opens N (argv 3) connections and holds them, sending nothing: prints
/// "held N" once all are open, then sleeps until killed.
pub const HOLDING_CLIENT: &str = r#"
import socket, sys, time
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) for _ in range(int(sys.argv[3]))]
print("held", len(socks), flush=True)
time.sleep(600)
"#;

/// Sends one SAL control packet from the namespace it runs in: argv =
/// dst, src_flowid, dst_flowid, flags, verno, ackno, nonce (hex), [src].
pub const SEND_CONTROL: &str = r#"
import socket, struct, sys
dst, sf, df, flags, verno, ackno, nonce = sys.argv[1:8]
hdr = struct.pack("!IIBBH", int(sf), int(df), 8, 6, 0)
ctl = struct.pack("!BBBBII", 0x10, 20, int(flags, 0), 0, int(verno), int(ackno)) + bytes.fromhex(nonce)
pkt = bytearray(hdr + ctl)
s = sum(struct.unpack("!%dH" % (len(pkt) // 2), pkt))
while s >> 16: s = (s & 0xffff) + (s >> 16)
pkt[10:12] = struct.pack("!H", ~s & 0xffff)
if len(sys.argv) > 8:
    # A spoofed source: the IP header is ours (IP_HDRINCL).
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(pkt), 1, 0, 64, 144, 0,
                     socket.inet_aton(sys.argv[8]), socket.inet_aton(dst))
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.sendto(ip + bytes(pkt), (dst, 0))
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 144)
    sock.sendto(bytes(pkt), (dst, 0))
"#;
