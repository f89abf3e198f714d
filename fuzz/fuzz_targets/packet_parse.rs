//! A whole IPv4+SAL+transport datagram: never panics; accepted packets
//! re-emit and parse back identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlate_common::wire::packet::ServalRepr;

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = ServalRepr::parse(data) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf).unwrap();
    let again = ServalRepr::parse(&buf[..n]).unwrap();
    assert_eq!(again.sal, repr.sal);
    assert_eq!(again.transport, repr.transport);
});
