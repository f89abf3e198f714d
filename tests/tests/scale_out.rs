//! Many translators, one service set (the paper's section 5): three
//! translators, each owning a public prefix, in front of the same three
//! host-mode instances; a real DNS server (dnsmasq) answers the service's
//! name with its address in every prefix; unmodified clients (curl through
//! the system resolver) fetch through whichever translator they get.

use std::collections::BTreeMap;
use std::time::Duration;

use xlate_tests::require_root;
use xlate_tests::scale_out::{address, fetch, Fetch, ScaleOutLab, INSTANCES, TTL_SECONDS};

const CLIENTS: usize = 60;

fn tally<'a>(fs: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in fs {
        *m.entry(f.to_string()).or_default() += 1;
    }
    m
}

/// Clients resolve the name and get every translator; each translator
/// picks instances by Maglev, and together they load every instance
/// (none takes more than half). One translator then fails: a client that
/// tries its address first waits for the client's neighbour resolution to
/// give up before curl tries the next one; once the DNS server stops
/// handing the address out, no client waits at all.
#[test]
fn clients_reach_the_service_through_every_translator_and_around_a_failed_one() {
    require_root();
    let _one_at_a_time = xlate_tests::serial();
    let mut lab = ScaleOutLab::new("so", 3, "");
    let round = |lab: &ScaleOutLab| -> Vec<Fetch> { (0..CLIENTS).map(|_| fetch(&lab.net.client, &[])).collect() };

    let all = round(&lab);
    let failed: Vec<&Fetch> = all.iter().filter(|f| !f.ok()).collect();
    assert!(failed.is_empty(), "fetches failed: {failed:#?}");
    let by_translator = tally(all.iter().map(|f| f.remote.as_str()));
    let by_instance = tally(all.iter().map(|f| f.body.as_str()));
    eprintln!("all up: by translator {by_translator:?}, by instance {by_instance:?}");
    for k in 1..=3 {
        assert!(by_translator.get(&address(k)).copied().unwrap_or(0) > 0, "no client reached t{k}: {by_translator:?}");
        assert!(lab.counter(k, "gw_prefix_flows") > 0, "t{k} started no prefix flow");
    }
    for i in INSTANCES {
        let n = by_instance.get(i).copied().unwrap_or(0);
        assert!(n > 0 && n <= CLIENTS / 2, "instance {i} took {n} of {CLIENTS}: {by_instance:?}");
    }
    // Each translator shows its prefix; live edits of prefixes are checked
    // like the file, and a bad one changes nothing.
    let show = lab.cli(1, &["map", "show"]);
    assert!(show.contains("198.18.1.0/24:80 services 00010000 + host -> 10.10.0.11"), "{show}");
    let bad = lab.translator_ns(2).output(
        xlate_tests::xlate_user_bin().to_str().unwrap(),
        &[
            "map",
            "set",
            "--iface",
            "g0",
            "--service",
            "198.18.2.7/24:80",
            "--id",
            "00020000",
            "--instances",
            "10.10.0.11",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("prefix 198.18.2.7/24: host bits set"), "{err}");
    let added = lab.cli(
        2,
        &["map", "set", "--service", "198.18.2.0/24:8000-8003", "--id", "00020000", "--instances", "10.10.0.12"],
    );
    assert!(added.starts_with("ok: 198.18.2.0/24:8000-8003"), "{added}");
    let show = lab.cli(2, &["map", "show"]);
    assert!(show.contains("198.18.2.0/24:80 services 00010000 + host"), "{show}");
    assert!(
        show.contains("198.18.2.0/24:8000-8003 services 00020000 + host -> 10.10.0.12 (1021/1021 slots)"),
        "{show}"
    );
    lab.cli(2, &["map", "del", "--service", "198.18.2.0/24:8001"]);
    assert!(!lab.cli(2, &["map", "show"]).contains(":8000-8003"));

    // t1 fails. Until DNS stops naming it, a client that gets its address
    // first waits for the neighbour lookup to fail, then curl goes on.
    lab.fail_translator(1);
    let during: Vec<Fetch> = (0..24).map(|_| fetch(&lab.net.client, &[])).collect();
    let failed: Vec<&Fetch> = during.iter().filter(|f| !f.ok()).collect();
    assert!(failed.is_empty(), "with t1 down, fetches failed: {failed:#?}");
    assert!(during.iter().all(|f| f.remote != address(1)), "reached a failed translator: {during:#?}");
    let slow: Vec<Duration> = during.iter().map(|f| f.took).filter(|t| *t > Duration::from_secs(1)).collect();
    let fast = during.iter().filter(|f| f.took <= Duration::from_secs(1)).count();
    eprintln!(
        "t1 down, still in DNS: {} of {} waited ({:?} .. {:?}), {fast} did not",
        slow.len(),
        during.len(),
        slow.iter().min(),
        slow.iter().max()
    );
    assert!(!slow.is_empty(), "no client tried t1's address first (DNS rotates its answers)");

    // DNS stops naming t1: resolvers that cache drop it after the TTL;
    // these clients (glibc, no cache) ask every time.
    lab.publish(&[2, 3]);
    std::thread::sleep(Duration::from_secs(u64::from(TTL_SECONDS)));
    let after = round(&lab);
    let failed: Vec<&Fetch> = after.iter().filter(|f| !f.ok()).collect();
    assert!(failed.is_empty(), "fetches failed: {failed:#?}");
    let worst = after.iter().map(|f| f.took).max().unwrap();
    eprintln!(
        "t1 out of DNS: worst fetch {worst:?}, by translator {:?}",
        tally(after.iter().map(|f| f.remote.as_str()))
    );
    assert!(worst < Duration::from_secs(1), "a client still waited {worst:?}");
    let by_instance = tally(after.iter().map(|f| f.body.as_str()));
    for i in INSTANCES {
        let n = by_instance.get(i).copied().unwrap_or(0);
        assert!(n > 0 && n <= CLIENTS / 2, "instance {i} took {n} of {CLIENTS} with two translators: {by_instance:?}");
    }
}

/// The anycast prefix both translators of [`the_same_configuration`] own.
const ANYCAST: &str = "198.18.9.0/24";
const ANYCAST_HOST: &str = "198.18.9.5";

/// Both translators also own [`ANYCAST`], with the same instances: what
/// ECMP or anycast in front of them would give.
fn the_same_configuration() -> String {
    let instances: Vec<String> = INSTANCES.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "\n[[prefix]]\nprefix = \"{ANYCAST}\"\nport = 80\nservice_id = \"00010000\"\ninstances = [{}]\n",
        instances.join(", ")
    )
}

/// Routes the anycast prefix to translator `k`, as ECMP or a BGP change
/// would move it.
fn route_anycast_to(lab: &ScaleOutLab, k: usize) {
    let (front, _, _) = xlate_tests::scale_out::translator(k);
    lab.net.client.ip(&["route", "replace", ANYCAST, "via", &front]);
}

/// A client that asks `GET /who` from a port it chooses and ends with a
/// reset (`SO_LINGER` 0), as clients abort, so that the 4-tuple is free
/// again at once (a close would leave it in TIME_WAIT for 60 s).
const WHO_FROM: &str = r#"
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[2])))
s.settimeout(15)
s.connect((sys.argv[1], 80))
s.sendall(b"GET /who HTTP/1.0\r\n\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
"#;

/// `GET /who` at the anycast address from client port `port`: the
/// instance that answered, and how long it took.
fn who_from(lab: &ScaleOutLab, port: u16) -> (String, Duration) {
    let p = port.to_string();
    let start = std::time::Instant::now();
    let out = lab.net.client.output("python3", &["-c", WHO_FROM, ANYCAST_HOST, &p]);
    assert!(out.status.success(), "client from port {port}: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), start.elapsed())
}

/// Two translators with the same configuration pick the same instance for
/// the same 4-tuple: Maglev's table depends only on the instances, and the
/// hash of the 4-tuple is the same everywhere. So a new connection keeps
/// its instance whichever translator ECMP or anycast hands it to, also
/// while an instance is out (each translator takes it out when a SYN of
/// its own to it goes unanswered) and after it returns.
#[test]
fn translators_with_one_configuration_choose_the_same_instance() {
    require_root();
    let _one_at_a_time = xlate_tests::serial();
    let lab = ScaleOutLab::new("same", 2, &the_same_configuration());
    let ports: Vec<u16> = (41000..41012).collect();
    let choose = |k: usize| -> Vec<String> {
        route_anycast_to(&lab, k);
        ports.iter().map(|p| who_from(&lab, *p).0).collect()
    };
    let via1 = choose(1);
    let via2 = choose(2);
    eprintln!("choices: {via1:?}");
    assert_eq!(via1, via2, "t1 and t2 chose differently for the same 4-tuples");
    assert!(tally(via1.iter().map(String::as_str)).len() > 1, "12 connections all went to one instance: {via1:?}");

    // One instance goes away. Each translator finds out from a SYN of its
    // own (2.2 s without an answer); the client's retransmission then
    // lands on the instance the smaller table gives, the same on both.
    let gone = via1[0].clone();
    let i = INSTANCES.iter().position(|a| *a == gone).unwrap();
    lab.net.instances[i].ip(&["link", "set", "e0", "down"]);
    let mut without = Vec::new();
    for k in [1, 2] {
        route_anycast_to(&lab, k);
        let (first, took) = who_from(&lab, ports[0]);
        eprintln!("t{k}, {gone} down: port {} went to {first} after {took:?}", ports[0]);
        assert_ne!(first, gone);
        let rest: Vec<String> = ports.iter().map(|p| who_from(&lab, *p).0).collect();
        assert!(rest.iter().all(|w| *w != gone), "t{k} still chose {gone}: {rest:?}");
        without.push(rest);
    }
    assert_eq!(without[0], without[1], "with {gone} out, t1 and t2 chose differently");
    for k in [1, 2] {
        let st: Vec<String> =
            lab.cli(k, &["stats"]).lines().filter(|l| !l.ends_with(" 0")).map(str::to_string).collect();
        eprintln!("t{k} stats: {st:?}");
    }
    // Only the absent instance's connections moved (Maglev).
    for (before, after) in via1.iter().zip(&without[0]) {
        assert!(before == after || *before == gone, "{before} -> {after}: a connection of a live instance moved");
    }

    // It returns; once both translators have put it back (10 s after they
    // took it out), both choose as at first.
    lab.net.instances[i].ip(&["link", "set", "e0", "up"]);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(choose(1), via1, "t1 after {gone} came back");
    assert_eq!(choose(2), via1, "t2 after {gone} came back");
}

/// What a client sees today when ECMP or anycast moves its established
/// connection to another translator: the flow's SAL state lives on the
/// first one only. The second has no flow for the client's segments and
/// passes them to its own stack (`gw_passed_no_flow`), which cannot carry
/// them into the connection; the instance, whose SAL packets still go to
/// the first translator's address, gets no more acknowledgements. The
/// download stops where it was until the client gives up
/// (docs/scale-out.md: what surviving it would take).
#[test]
fn an_established_download_moved_to_another_translator_stops() {
    require_root();
    let _one_at_a_time = xlate_tests::serial();
    let lab = ScaleOutLab::new("move", 2, &the_same_configuration());
    route_anycast_to(&lab, 1);
    let url = format!("http://{ANYCAST_HOST}/gen/400000000/7");
    let file = lab.dir.join("download");
    let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
    // 4 MB/s (curl's average: it runs ahead of it) for at most 12 s.
    let mut curl = lab
        .net
        .client
        .spawn("curl", &["-sS", "--limit-rate", "4M", "--max-time", "12", "-o", file.to_str().unwrap(), &url]);
    std::thread::sleep(Duration::from_secs(3));
    let passed_before = lab.counter(2, "gw_passed_no_flow");
    let at_move = size();
    route_anycast_to(&lab, 2);
    // What was in flight and in the client's socket buffer still arrives
    // (curl reads it at its rate); then nothing more does.
    std::thread::sleep(Duration::from_secs(5));
    let settled = size();
    std::thread::sleep(Duration::from_secs(2));
    let later = size();
    let (_, err) = curl.stop(0);
    let passed = lab.counter(2, "gw_passed_no_flow") - passed_before;
    eprintln!(
        "moved after 3 s at {at_move} bytes; {settled} bytes 5 s later, {later} 2 s after that; curl: {}; t2 passed {passed} \
         segments it had no flow for",
        err.trim()
    );
    assert!(at_move > 4_000_000, "the download had not started: {at_move} bytes");
    assert_eq!(later, settled, "the download went on after the move");
    assert!(err.contains("Operation timed out"), "the download did not stop: {err}");
    assert!(passed > 0, "t2 saw none of the client's segments");
}
