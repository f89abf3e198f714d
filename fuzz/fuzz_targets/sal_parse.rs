//! The SAL parser on arbitrary bytes: never panics, and whatever it accepts
//! re-emits to a header that parses to the same representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlate_common::wire::sal::{SalPacket, SalRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(pkt) = SalPacket::new_checked(data) else {
        return;
    };
    assert!(pkt.header_len() <= data.len());
    for ext in pkt.extensions() {
        assert!(ext.is_ok(), "checked packet with a bad extension");
    }
    let _ = (pkt.control(), pkt.service_id(), pkt.source().map(|s| s.iter().count()));
    if let Ok(repr) = SalRepr::parse(&pkt) {
        let mut buf = vec![0u8; repr.header_len()];
        repr.emit(&mut SalPacket::new_unchecked(&mut buf[..])).unwrap();
        let again = SalPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(SalRepr::parse(&again).unwrap(), repr);
    }
});
