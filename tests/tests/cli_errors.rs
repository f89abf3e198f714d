//! Operators' mistakes get a clear error that names the problem (file,
//! line, flag, value), exit status 2, and change nothing.

use std::process::Command;

use xlate_tests::xlate_user_bin;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(xlate_user_bin()).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_translator_config_names_file_line_and_value() {
    let dir = std::env::temp_dir().join(format!("xlate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[translator]\nsal_address = \"10.10.0.1\"\n\n[[service]]\naddress = \"203.0.113.1\"\nport = 80\nservice_id = \"00zz\"\ninstances = [\"10.10.0.11\"]\n",
    )
    .unwrap();
    let (code, err) = run(&["run", "--iface", "xlt-none0", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml: line 7: service_id \"00zz\""), "{err}");
    let (code, err) = run(&["run", "--iface", "xlt-none0", "--config", "/nonexistent/xlate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/xlate.toml"), "{err}");
    std::fs::write(&bad, "[translator]\nsal_adress = \"10.10.0.1\"\n").unwrap();
    let (_, err) = run(&["run", "--iface", "xlt-none0", "--config", bad.to_str().unwrap()]);
    assert!(err.contains("unknown field `sal_adress`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_host_mode_flags_name_the_flag_and_value() {
    let (code, err) = run(&["host", "--iface", "xlt-none0", "--serve", "00zz=80"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--serve \"00zz=80\"") && err.contains("'z' at position 2"), "{err}");
    let (_, err) = run(&["host", "--iface", "xlt-none0", "--connect", "00000050=10.0.0.1"]);
    assert!(err.contains("expected ADDR:PORT"), "{err}");
    let (_, err) = run(&["host", "--iface", "xlt-none0", "--route", "00000051:24=10.0.0.1"]);
    assert!(err.contains("--route \"00000051:24=10.0.0.1\": service ID has bits set beyond its /24 prefix"), "{err}");
    let (_, err) = run(&["host", "--iface", "xlt-none0", "--serve", "00000050=99999"]);
    assert!(err.contains("port \"99999\" is not a number from 1 to 65535"), "{err}");
}

#[test]
fn the_shipped_configurations_parse() {
    for f in ["xlate.toml", "lab.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(f);
        xlate_user::config::Config::load(&p).unwrap_or_else(|e| panic!("{f}: {e:#}"));
    }
}

#[test]
fn every_command_shows_an_example_and_read_commands_take_json() {
    let commands: &[&[&str]] = &[
        &["decode"],
        &["watch"],
        &["run"],
        &["check"],
        &["stats"],
        &["flows"],
        &["map", "show"],
        &["map", "set"],
        &["map", "del"],
        &["host"],
        &["host", "flows"],
        &["host", "stats"],
        &["host", "migrate"],
    ];
    for c in commands {
        let out = Command::new(xlate_user_bin()).args(*c).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{c:?}");
        assert!(help.contains("Example"), "{c:?} --help shows no example:\n{help}");
        let reads = [&["stats"][..], &["flows"], &["map", "show"], &["host", "flows"], &["host", "stats"]];
        if reads.contains(c) {
            assert!(help.contains("--json"), "{c:?} has no --json:\n{help}");
        }
    }
}
