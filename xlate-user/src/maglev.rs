//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights:
//! each instance appears as `weight` virtual nodes, each with its own
//! preference permutation. Removing an instance only moves the slots it
//! held (plus a few from the permutation shuffle), so connections to the
//! other instances keep their instance.
//!
//! The table depends only on the set of instances and their weights, not
//! on the order they are listed in: two translators with the same
//! instances choose the same instance for the same 4-tuple (the kernel's
//! `flow_hash` is the same everywhere), so ECMP or anycast in front of
//! several translators keeps a new connection's instance whichever
//! translator it reaches.

use std::net::Ipv4Addr;

use crate::config::Instance;

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A lookup table of `m` slots (m prime) over the instances.
pub fn table(instances: &[Instance], m: u32) -> Vec<Ipv4Addr> {
    let m = m as u64;
    let mut nodes: Vec<(Ipv4Addr, u64, u64)> = Vec::new();
    for inst in instances {
        for k in 0..inst.weight {
            let mut name = inst.address.octets().to_vec();
            name.extend_from_slice(&k.to_be_bytes());
            let offset = fnv1a(&name, 0x5a17) % m;
            let skip = fnv1a(&name, 0x3c3c) % (m - 1) + 1;
            nodes.push((inst.address, offset, skip));
        }
    }
    // Nodes take turns in a fixed order, the same whatever the listing's.
    nodes.sort();
    let mut out = vec![Ipv4Addr::UNSPECIFIED; m as usize];
    if nodes.is_empty() {
        return out;
    }
    let mut next = vec![0u64; nodes.len()];
    let mut filled = 0;
    'outer: loop {
        for (i, (addr, offset, skip)) in nodes.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while out[c as usize] != Ipv4Addr::UNSPECIFIED {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            out[c as usize] = *addr;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'outer;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(a: &str, w: u32) -> Instance {
        Instance { address: a.parse().unwrap(), weight: w }
    }

    #[test]
    fn weights_split_the_table() {
        let t = table(&[inst("10.0.0.1", 1), inst("10.0.0.2", 3)], 1021);
        let a = t.iter().filter(|x| **x == "10.0.0.1".parse::<Ipv4Addr>().unwrap()).count();
        assert!(t.iter().all(|x| !x.is_unspecified()));
        assert!((240..=270).contains(&a), "{a} of 1021 slots for weight 1 of 4");
    }

    #[test]
    fn removing_an_instance_keeps_the_others_slots() {
        let full = table(&[inst("10.0.0.1", 1), inst("10.0.0.2", 1), inst("10.0.0.3", 1)], 1021);
        let less = table(&[inst("10.0.0.1", 1), inst("10.0.0.2", 1)], 1021);
        let three: Ipv4Addr = "10.0.0.3".parse().unwrap();
        let moved = full.iter().zip(&less).filter(|(f, l)| **f != three && f != l).count();
        assert!(moved < 1021 / 20, "{moved} slots of surviving instances moved");
    }

    #[test]
    fn the_table_is_the_same_whatever_the_listing_order() {
        let a = table(&[inst("10.0.0.1", 1), inst("10.0.0.2", 2), inst("10.0.0.3", 1)], 1021);
        let b = table(&[inst("10.0.0.3", 1), inst("10.0.0.1", 1), inst("10.0.0.2", 2)], 1021);
        assert_eq!(a, b);
    }
}
