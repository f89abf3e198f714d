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
