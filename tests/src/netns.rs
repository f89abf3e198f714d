//! Network namespaces for tests: unique names, addresses only inside them,
//! and removal on drop (also when the test panics).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace owned by the test; deleted, with every process in
/// it killed, when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `xlt-<pid>-<n>-<tag>`, unique across parallel tests and runs,
    /// with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("xlt-{}-{n}-{tag}", std::process::id());
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip -n <ns> …`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        sh(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Runs a program in the namespace; returns its output (any status).
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program).args(args).output().expect("spawn in netns")
    }

    /// Like [`spawn`](Self::spawn) for programs that report on stderr.
    pub fn spawn_stderr(&self, program: &str, args: &[&str]) -> Bg {
        self.spawn(program, args)
    }

    /// Starts a background process in the namespace, killed on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Bg {
        let child = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in netns");
        Bg::new(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: signalling a pid we just listed.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Connects `a` and `b` with a veth pair whose ends are created directly
/// inside the namespaces (nothing touches the host's namespace), assigns
/// the addresses (CIDR form) and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    sh(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A background process, killed (SIGKILL) when dropped unless it was
/// stopped first.
pub struct Bg {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    stderr: Option<BufReader<std::process::ChildStderr>>,
}

impl Bg {
    fn new(mut child: Child) -> Bg {
        let stdout = child.stdout.take().map(BufReader::new);
        Bg { child: Some(child), stdout, stderr: None }
    }

    /// Wraps a child spawned with piped stdout and stderr.
    pub fn from_child(child: Child) -> Bg {
        Bg::new(child)
    }

    /// Like [`wait_for_line`](Self::wait_for_line), on stderr.
    pub fn wait_for_stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        if self.stderr.is_none() {
            let e = self.child.as_mut().and_then(|c| c.stderr.take()).expect("stderr piped");
            self.stderr = Some(BufReader::new(e));
        }
        let deadline = Instant::now() + timeout;
        let err = self.stderr.as_mut().unwrap();
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = err.read_line(&mut line).expect("read child stderr");
            if n == 0 || Instant::now() > deadline {
                panic!("no stderr line containing {needle:?}; got: {seen}");
            }
            if line.contains(needle) {
                return line;
            }
            seen.push_str(&line);
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Reads stdout lines until one contains `needle`; returns every line
    /// read, that one included.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let out = self.stdout.as_mut().expect("stdout piped");
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("read child stdout");
            if n == 0 || Instant::now() > deadline {
                panic!("no line containing {needle:?}; got: {seen}");
            }
            seen.push_str(&line);
            if line.contains(needle) {
                return seen;
            }
        }
    }

    /// Reads stdout lines until one contains `needle` (or the deadline or
    /// EOF passes, which panics with what was read); returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let seen = self.read_until(needle, timeout);
        seen.lines().last().map(|l| format!("{l}\n")).unwrap_or_default()
    }

    /// Sends `sig`, waits for exit, returns the rest of stdout and stderr.
    pub fn stop(&mut self, sig: i32) -> (String, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut rest = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        } else if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let _ = child.wait();
        (rest, err)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
