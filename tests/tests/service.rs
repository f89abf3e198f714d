//! Running as a service: `xlate-user check` validates a configuration
//! without privileges or side effects (exit 0 and a summary, or exit 2 and
//! the error naming file, line and field), and the systemd units in
//! packaging/systemd pass `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xlate_tests::xlate_user_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory of its own for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("xlate-service-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(out: &Output) -> (i32, String, String) {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

fn check(config: &Path) -> (i32, String, String) {
    text(&Command::new(xlate_user_bin()).args(["check", "--config"]).arg(config).output().unwrap())
}

#[test]
fn check_accepts_the_shipped_configurations_with_a_summary() {
    for (f, services) in [
        ("xlate.toml", "2 services (2 fast, 0 relay) + 1 prefix (256 addresses), 2 instances, 1 behind a router"),
        ("lab.toml", "1 service (1 fast, 0 relay), 2 instances"),
    ] {
        let p = repo().join("config").join(f);
        let (code, out, err) = check(&p);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(err.is_empty(), "{f}: unexpected warnings: {err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.starts_with(&format!("{}: ok: {services}", p.display())), "{out}");
    }
}

const GOOD: &str = "[translator]
sal_address = \"10.10.0.1\"

[[service]]
address = \"203.0.113.1\"
port = 80
service_id = \"00000050\"
instances = [\"10.10.0.11\", { address = \"10.10.0.12\", weight = 3 }]
";

#[test]
fn check_refuses_a_broken_configuration_naming_file_line_and_field() {
    let dir = Scratch::new("broken");
    let cases = [
        (
            "bad-address.toml",
            GOOD.replace("\"10.10.0.1\"", "\"10.10.0.300\""),
            "line 2: sal_address \"10.10.0.300\" is not an IPv4 address",
        ),
        (
            "bad-weight.toml",
            GOOD.replace("weight = 3", "weight = 0"),
            "line 8: instance 10.10.0.12: weight 0 is not 1 to 100",
        ),
        (
            "bad-instance.toml",
            GOOD.replace("\"10.10.0.11\"", "\"10.10.0.x\""),
            "line 8: instance \"10.10.0.x\" is not an IPv4 address",
        ),
        ("unknown-field.toml", GOOD.replace("port = 80", "prot = 80"), "TOML parse error at line 6, column 1"),
        ("syntax.toml", GOOD.replace("port = 80", "port = = 80"), "TOML parse error at line 6"),
        (
            "twice.toml",
            format!("{GOOD}\n{}", &GOOD[GOOD.find("[[service]]").unwrap()..]),
            "line 11: service 203.0.113.1:80 is configured twice",
        ),
    ];
    for (name, body, want) in cases {
        let p = dir.write(name, &body);
        let (code, out, err) = check(&p);
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(out.is_empty(), "{name}: printed a summary for a bad file: {out}");
        assert!(err.contains(&format!("{}: {want}", p.display())), "{name}: {err}");
    }
    // The field itself, for the parser's own errors.
    let (_, _, err) = check(&dir.0.join("unknown-field.toml"));
    assert!(err.contains("unknown field `prot`"), "{err}");
    let (code, _, err) = check(&dir.0.join("missing.toml"));
    assert_eq!(code, 2);
    assert!(err.contains(&format!("cannot read {}", dir.0.join("missing.toml").display())), "{err}");
}

#[test]
fn check_warns_about_what_loads_but_looks_wrong() {
    let dir = Scratch::new("warn");
    let p = dir.write(
        "router.toml",
        &GOOD.replace(
            "instances = [\"10.10.0.11\", { address = \"10.10.0.12\", weight = 3 }]",
            "router = \"10.10.0.1\"",
        ),
    );
    let (code, out, err) = check(&p);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok: 1 service"), "{out}");
    assert!(
        err.contains(&format!(
            "{}: warning: service 203.0.113.1:80: router 10.10.0.1 is the translator's own sal_address",
            p.display()
        )),
        "{err}"
    );
}

/// Runs `check` as an unprivileged user (nobody, when the test runs as
/// root) in an empty directory that is also its HOME, with an empty
/// environment: it must succeed and leave the directory as it was.
#[test]
fn check_needs_no_privilege_and_touches_nothing() {
    let dir = Scratch::new("unprivileged");
    std::fs::copy(repo().join("config/xlate.toml"), dir.0.join("xlate.toml")).unwrap();
    let before = dir.listing();
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--"]).arg(xlate_user_bin());
        c
    } else {
        Command::new(xlate_user_bin())
    };
    let out = cmd
        .args(["check", "--config", "xlate.toml"])
        .current_dir(&dir.0)
        .env_clear()
        .env("HOME", &dir.0)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("xlate.toml: ok: 2 services"), "{out}");
    assert_eq!(dir.listing(), before, "check wrote into its working directory");
}

/// The units as installed, but pointing at the built binary (verify
/// insists that every command exists), instantiated for eth0, and the
/// namespace drop-in applied to one instance.
#[test]
fn the_systemd_units_verify() {
    let Some(tool) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        println!("SKIPPED: systemd-analyze is not installed (apt-get install systemd, or cargo xtask setup)");
        return;
    };
    let dir = Scratch::new("units");
    let src = repo().join("packaging/systemd");
    let bin = xlate_user_bin();
    let mut units = Vec::new();
    for (template, instance) in [("xlate@.service", "eth0"), ("xlate-host@.service", "eth0"), ("xlate@.service", "gw0")]
    {
        let text = std::fs::read_to_string(src.join(template)).unwrap();
        assert!(!text.contains("\nExecStopPost"), "{template}: a stop must not reset flows");
        assert!(text.contains("\nKillSignal=SIGTERM\n") && text.contains("\nRestart=on-failure\n"), "{template}");
        let name = template.replace("@.", &format!("@{instance}."));
        units.push(dir.write(&name, &text.replace("/usr/local/bin/xlate-user", bin.to_str().unwrap())));
    }
    let xlate = std::fs::read_to_string(src.join("xlate@.service")).unwrap();
    let reload: Vec<&str> = xlate.lines().filter(|l| l.starts_with("ExecReload=")).collect();
    assert_eq!(
        reload,
        [
            "ExecReload=/usr/local/bin/xlate-user check --config /etc/xlate/%i.toml",
            "ExecReload=/bin/kill -HUP $MAINPID"
        ]
    );
    assert!(xlate.contains("\nExecStartPre=/usr/local/bin/xlate-user check --config /etc/xlate/%i.toml\n"));
    let dropin = dir.0.join("xlate@gw0.service.d");
    std::fs::create_dir(&dropin).unwrap();
    let netns = std::fs::read_to_string(src.join("netns.conf")).unwrap();
    std::fs::write(dropin.join("netns.conf"), netns.replace("/run/netns/NAME", "/run/netns/gw")).unwrap();
    let out = Command::new(tool).args(["verify", "--man=no"]).args(&units).output().unwrap();
    let (code, out, err) = text(&out);
    assert_eq!(code, 0, "{out}{err}");
    // verify only warns about unknown keys and bad values: none allowed.
    assert!(err.trim().is_empty() && out.trim().is_empty(), "{out}{err}");
    // And the drop-in is taken.
    let dump = Command::new(tool).env("SYSTEMD_LOG_LEVEL", "debug").arg("verify").arg(&units[2]).output().unwrap();
    let (_, out, err) = text(&dump);
    assert!(format!("{out}{err}").contains("NetworkNamespacePath: /run/netns/gw"), "the drop-in was not applied");
}
