//! Test-only: the translator's XDP program loaded (not attached) for packet
//! fixtures and micro-benchmarks through BPF_PROG_TEST_RUN. Built only with
//! the `testbed` feature (the tests and `cargo xtask bench` enable it), so
//! it is not part of the production binary.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aya::maps::{Array, HashMap};
use aya::programs::Xdp;
use xlate_common::flow::{gw, names, EngineConfig};
use xlate_common::maps::ServiceKey;

use crate::gateway::xdp_program;

/// The translator's XDP program loaded (not attached) with one service,
/// for packet fixtures and micro-benchmarks through BPF_PROG_TEST_RUN.
/// The flow table key of every test bed: fixed, so that a test's flow
/// IDs name the same slots in every run.
pub const TEST_KEY: u64 = 0x5eed_5eed_5eed_5eed;

pub struct TestBed {
    pub ebpf: aya::Ebpf,
    /// The build of the XDP program loaded (`xlate_gw` or `xlate_gw_nometa`).
    pub program: &'static str,
    /// The XDP metadata in front of the last output frame (a checksum note
    /// for the TC stage, or empty).
    pub last_meta: Vec<u8>,
}

impl TestBed {
    /// Service `00000050` at `public`:80, every Maglev slot on `instance`,
    /// SAL address `sal_address`, MSS 1448.
    /// The program is the build this kernel takes (see `xdp_program`).
    pub fn new(sal_address: Ipv4Addr, public: Ipv4Addr, instance: Ipv4Addr) -> Result<TestBed> {
        Self::with_program(xdp_program(), sal_address, public, instance)
    }

    /// [`Self::new`] with the given build of the XDP program.
    pub fn with_program(
        program: &'static str,
        sal_address: Ipv4Addr,
        public: Ipv4Addr,
        instance: Ipv4Addr,
    ) -> Result<TestBed> {
        let mut ebpf = crate::ebpf::load()?;
        let prog: &mut Xdp =
            ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing"))?.try_into()?;
        crate::ebpf::loaded(program, prog.load())?;
        let mut engine = EngineConfig { addr: sal_address.octets(), max_mss: 1448, ..Default::default() };
        crate::engine_clock::measure(&mut ebpf, &mut engine);
        let mut cfg: Array<_, EngineConfig> = Array::try_from(ebpf.map_mut(names::CONFIG).unwrap())?;
        cfg.set(0, engine, 0)?;
        let table =
            crate::agent::flow_table::FlowTable::of(ebpf.map(names::FLOWS).ok_or_else(|| anyhow!("no FLOWS map"))?)?;
        table.seal(TEST_KEY)?;
        crate::ebpf::fresh_room(&mut ebpf, xlate_common::flow::SynBudget::GATEWAY)?;
        let mut svc: HashMap<_, ServiceKey, gw::GwService> = HashMap::try_from(ebpf.map_mut(gw::SERVICES).unwrap())?;
        let sid: xlate_common::ServiceId = "00000050".parse().expect("valid");
        svc.insert(ServiceKey::new(public, 80), gw::GwService { service_id: sid.0, index: 0, router: [0; 4] }, 0)?;
        let mut mg: Array<_, [u8; 4]> = Array::try_from(ebpf.map_mut(gw::MAGLEV).unwrap())?;
        for slot in 0..gw::MAGLEV_SIZE {
            mg.set(slot, instance.octets(), 0)?;
        }
        Ok(TestBed { ebpf, program, last_meta: Vec::new() })
    }

    /// The flow table the program writes.
    pub fn flow_table(&self) -> Result<crate::agent::flow_table::FlowTable> {
        crate::agent::flow_table::FlowTable::of(self.ebpf.map(names::FLOWS).ok_or_else(|| anyhow!("no FLOWS map"))?)
    }

    /// Every live flow, by ID.
    pub fn flows(&self) -> Result<Vec<xlate_common::flow::FlowState>> {
        let mut v: Vec<_> = self.flow_table()?.iter().collect();
        v.sort_by_key(|f| f.local_flow);
        Ok(v)
    }

    /// Sets the kernel's room for new flows of kind `slot` (`flow::room`),
    /// as the agent does every tick.
    pub fn set_room(&mut self, slot: u32, n: i64) -> Result<()> {
        let mut r: Array<_, i64> = Array::try_from(self.ebpf.map_mut(names::ROOM).unwrap())?;
        r.set(slot, n, 0)?;
        Ok(())
    }

    /// Frees every flow (slots and tuples), so that a measurement starts
    /// from an empty table as the one before it did.
    pub fn clear_flows(&mut self) -> Result<()> {
        let table = self.flow_table()?;
        for id in table.ids() {
            table.remove(id);
        }
        let mut t: HashMap<_, xlate_common::maps::FlowKey, xlate_common::flow::TupleEntry> =
            HashMap::try_from(self.ebpf.map_mut(names::TUPLES).unwrap())?;
        let keys: Vec<_> = t.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            t.remove(&k)?;
        }
        Ok(())
    }

    /// Puts the services of `network`/`len` on `port` in the kernel
    /// (`[[prefix]]`; host 0's service `base`), on Maglev row 0 (the test
    /// bed's instance).
    pub fn set_prefix(&mut self, network: Ipv4Addr, len: u8, port: u16, base: xlate_common::ServiceId) -> Result<()> {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        let mut m: LpmTrie<_, gw::PrefixKey, gw::GwPrefix> =
            LpmTrie::try_from(self.ebpf.map_mut(gw::PREFIXES).unwrap())?;
        let key = Key::new(
            gw::PrefixKey::PORT_BITS + u32::from(len),
            gw::PrefixKey { port: port.to_be_bytes(), addr: network.octets() },
        );
        let host_mask = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        m.insert(&key, gw::GwPrefix { service_id: base.0, host_mask, index: 0, router: [0; 4] }, 0)?;
        Ok(())
    }

    /// The kernel's room for new flows of kind `slot`.
    pub fn room(&self, slot: u32) -> Result<i64> {
        let r: Array<_, i64> = Array::try_from(self.ebpf.map(names::ROOM).unwrap())?;
        Ok(r.get(&slot, 0)?)
    }

    /// Runs the translator's TC stage (`xlate_gw_checksum`) once on
    /// `frame`, as a skb the kernel made (not CHECKSUM_PARTIAL): (verdict,
    /// output frame). Loaded on first use, against the same maps.
    pub fn run_tc_stage(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(gw::CHECKSUM_PROGRAM)
            .ok_or_else(|| anyhow!("program {} missing", gw::CHECKSUM_PROGRAM))?
            .try_into()?;
        if prog.fd().is_err() {
            crate::ebpf::loaded(gw::CHECKSUM_PROGRAM, prog.load())?;
        }
        let mut out = vec![0u8; frame.len() + 512];
        let r =
            prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs the program once on `frame`: (verdict, output frame, run time).
    /// Metadata the program left in front of the frame goes to `last_meta`.
    pub fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>, Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &mut Xdp = self.ebpf.program_mut(self.program).unwrap().try_into()?;
        let mut out = vec![0u8; frame.len() + 512];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. On output `data` is the length
        // of the metadata in front of the frame.
        let mut ctx_in = [0u8; 24];
        ctx_in[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let mut ctx_out = [0u8; 24];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        let meta = (u32::from_ne_bytes(ctx_out[0..4].try_into().expect("4 bytes")) as usize).min(out.len());
        self.last_meta = out.drain(..meta).collect();
        Ok((r.return_value, out, r.duration))
    }

    /// Runs another XDP program of the object (loaded on first use, with
    /// the same maps) once on `frame`: its run time.
    pub fn run_program(&mut self, name: &str, frame: &[u8]) -> Result<Duration> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &mut Xdp =
            self.ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?.try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let mut out = vec![0u8; frame.len() + 512];
        let r =
            prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })?;
        Ok(r.duration)
    }
}
