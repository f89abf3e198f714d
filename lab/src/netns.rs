//! Network namespaces, veth links and background processes for labs.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The namespaces this process made and has not deleted yet: what
/// [`remove_all`] removes when a program is interrupted before its labs
/// are dropped.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Removes every namespace this process made and still holds, as dropping
/// each would (its processes killed, the namespace deleted). For a signal
/// that ends the program before its labs are dropped:
/// [`remove_labs_on_interrupt`].
pub fn remove_all() {
    let names = {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        INTERRUPTED.store(true, Ordering::SeqCst);
        std::mem::take(&mut *live)
    };
    for name in names {
        remove(&name);
    }
}

/// Set once the program is interrupted: from then on no namespace is
/// made (the program's other threads go on until it exits).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the program was interrupted ([`remove_labs_on_interrupt`]):
/// nothing new should start.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Makes an interrupt (Ctrl-C's SIGINT, a timeout's SIGTERM, SIGHUP) end
/// the program without leaving its labs behind: the signals are taken by a
/// thread of their own, which runs `first` (the program's own cleanup,
/// while the namespaces still exist), removes every namespace this process
/// made ([`remove_all`]) and exits with 128 + the signal. Call it before
/// any other thread starts (threads inherit the blocked signals; children
/// do not: the standard library clears the mask when it spawns).
pub fn remove_labs_on_interrupt(first: fn()) {
    // SAFETY: signal-set calls on a set of our own, then blocking those
    // signals in this (the only) thread.
    let set = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        let set = set.assume_init();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waiting for the signals blocked above.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        eprintln!("interrupted (signal {sig}): removing the labs");
        INTERRUPTED.store(true, Ordering::SeqCst);
        first();
        remove_all();
        std::process::exit(128 + sig);
    });
}

/// The processes in namespace `name`.
fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Where `ip netns exec` finds namespace `name`'s own `/etc` files.
fn etc_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}

/// Kills every process in namespace `name` and deletes it.
fn remove(name: &str) {
    for pid in pids_in(name) {
        // SAFETY: signalling a pid we just listed.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let _ = std::fs::remove_dir_all(etc_dir(name));
}

/// How a lab names its namespaces.
#[derive(Clone, Copy, Debug)]
pub enum Naming<'a> {
    /// `xlt-<pid>-<n>-<tag>-<role>`: unique across parallel tests and runs.
    Unique(&'a str),
    /// `<prefix>-<role>`: a lab an operator addresses by name (a stale one
    /// of the same name is removed first).
    Fixed(&'a str),
}

impl Naming<'_> {
    /// The namespace for `role`, created with its loopback up.
    pub fn create(self, role: &str) -> Result<Netns> {
        match self {
            Naming::Unique(tag) => Netns::try_new(&format!("{tag}-{role}")),
            Naming::Fixed(prefix) => Netns::fixed(&format!("{prefix}-{role}")),
        }
    }
}

/// A network namespace owned by the lab; deleted, with every process in
/// it killed, when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `xlt-<pid>-<n>-<tag>`, unique across parallel tests and runs,
    /// with its loopback up. Panics if it cannot (for tests).
    pub fn new(tag: &str) -> Netns {
        Self::try_new(tag).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// As [`Netns::new`], with an error instead of a panic.
    pub fn try_new(tag: &str) -> Result<Netns> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::create(format!("xlt-{}-{n}-{tag}", std::process::id()))
    }

    /// Creates the namespace `name`, removing a stale one of that name.
    pub fn fixed(name: &str) -> Result<Netns> {
        drop(Netns { name: name.to_string() });
        Self::create(name.to_string())
    }

    fn create(name: String) -> Result<Netns> {
        {
            // Made and listed under the lock: an interrupt's `remove_all`
            // either finds it or stops it from being made.
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if interrupted() {
                bail!("interrupted: namespace {name} not made");
            }
            run(Command::new("ip").args(["netns", "add", &name]))?;
            live.push(name.clone());
        }
        let ns = Netns { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec`, which
    /// also gives it a mount namespace of its own, as operators run it).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A command that enters only the network namespace (`nsenter --net`):
    /// for agents, whose pins must stay visible to the host.
    pub fn net_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(program);
        c
    }

    /// `ip -n <ns> …`, which must succeed (panics otherwise; for tests).
    pub fn ip(&self, args: &[&str]) {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `ip -n <ns> …`.
    pub fn try_ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ethtool -K <dev> <feature> on|off` inside the namespace.
    pub fn set_offload(&self, dev: &str, feature: &str, on: bool) -> Result<()> {
        run(self.cmd("ethtool").args(["-K", dev, feature, if on { "on" } else { "off" }]))
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

    fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// Makes `nameserver` the resolver of every program run through
    /// [`Netns::cmd`]: `ip netns exec` puts `/etc/netns/<name>/resolv.conf`
    /// over `/etc/resolv.conf` (removed with the namespace).
    pub fn set_resolver(&self, nameserver: &str) -> Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n");
        std::fs::write(dir.join("resolv.conf"), conf).with_context(|| format!("writing {}/resolv.conf", dir.display()))
    }

    fn etc_dir(&self) -> std::path::PathBuf {
        etc_dir(&self.name)
    }

    /// Sends SIGTERM to every process in the namespace and waits up to
    /// `within` for them to go (agents detach and unpin on SIGTERM).
    pub fn terminate_all(&self, within: Duration) {
        for pid in self.pids() {
            // SAFETY: signalling a pid just listed.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + within;
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| *n != self.name);
        remove(&self.name);
    }
}

/// Connects `a` and `b` with a veth pair whose ends are created directly
/// inside the namespaces (nothing touches the host's namespace), assigns
/// the addresses (CIDR form) and brings both ends up. Panics on failure
/// (for tests); see [`try_veth`].
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    try_veth(a, a_if, Some(a_addr), b, b_if, Some(b_addr)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// As [`veth`]; an end without an address is only brought up.
pub fn try_veth(
    a: &Netns,
    a_if: &str,
    a_addr: Option<&str>,
    b: &Netns,
    b_if: &str,
    b_addr: Option<&str>,
) -> Result<()> {
    run(Command::new("ip").args([
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
    ]))?;
    for (ns, dev, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if let Some(addr) = addr {
            ns.try_ip(&["addr", "add", addr, "dev", dev])?;
        }
        ns.try_ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A background process, killed when dropped (SIGKILL, or SIGTERM and a
/// wait for those made with [`Bg::terminate_on_drop`]) unless it was
/// stopped first. Its stderr is drained as it comes (a chatty process
/// never blocks on a full pipe) and kept for [`Bg::wait_for_stderr_line`]
/// and [`Bg::stop`].
pub struct Bg {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    stderr: Option<Stderr>,
    drop_signal: i32,
}

/// The lines a child wrote so far and whether it closed the stream, with
/// the condition its reader signals.
type SharedLines = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// The lines a child wrote to stderr so far, and how far a waiter read.
struct Stderr {
    lines: SharedLines,
    seen: usize,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Stderr {
    fn drain(e: std::process::ChildStderr) -> Stderr {
        let lines = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(e).lines() {
                let Ok(line) = line else { break };
                let (m, c) = &*l;
                m.lock().unwrap().0.push(line);
                c.notify_all();
            }
            let (m, c) = &*l;
            m.lock().unwrap().1 = true;
            c.notify_all();
        });
        Stderr { lines, seen: 0, reader: Some(reader) }
    }

    /// Waits for a line containing `needle` after those already seen.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.lines;
        let mut g = m.lock().unwrap();
        loop {
            while self.seen < g.0.len() {
                let line = g.0[self.seen].clone();
                self.seen += 1;
                if line.contains(needle) {
                    return format!("{line}\n");
                }
            }
            let now = Instant::now();
            if g.1 || now > deadline {
                panic!("no stderr line containing {needle:?}; got: {}", g.0.join("\n"));
            }
            g = c.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Everything written, once the child has exited.
    fn all(mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let g = self.lines.0.lock().unwrap();
        g.0.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Bg {
    fn new(mut child: Child) -> Bg {
        let stdout = child.stdout.take().map(BufReader::new);
        let stderr = child.stderr.take().map(Stderr::drain);
        Bg { child: Some(child), stdout, stderr, drop_signal: libc::SIGKILL }
    }

    /// Wraps a child (stdout and stderr piped, or not read).
    pub fn from_child(child: Child) -> Bg {
        Bg::new(child)
    }

    /// On drop, SIGTERM and wait: for agents, which detach and unpin.
    pub fn terminate_on_drop(mut self) -> Bg {
        self.drop_signal = libc::SIGTERM;
        self
    }

    /// Like [`wait_for_line`](Self::wait_for_line), on stderr.
    pub fn wait_for_stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.stderr.as_mut().expect("stderr piped").wait_for(needle, timeout)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
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

    /// Sends `sig` (0: none, the process ends by itself), waits for exit,
    /// returns the rest of stdout and all of stderr.
    pub fn stop(&mut self, sig: i32) -> (String, String) {
        let mut child = self.child.take().expect("running");
        if sig != 0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let mut rest = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        }
        let _ = child.wait();
        let err = self.stderr.take().map(Stderr::all).unwrap_or_default();
        (rest, err)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, self.drop_signal) };
            let _ = c.wait();
        }
    }
}
