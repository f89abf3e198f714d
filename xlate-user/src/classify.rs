//! The packet classifier (`xlate_classify`): attach it to an interface and
//! read its per-CPU counters.

use std::fmt;

use anyhow::{anyhow, Result};
use aya::{
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use xlate_common::maps::{names, ClassifierCounter};

pub const PROGRAM: &str = "xlate_classify";

/// ClassifierCounter totals summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters([u64; ClassifierCounter::COUNT]);

impl Counters {
    pub fn get(&self, c: ClassifierCounter) -> u64 {
        self.0[c.index() as usize]
    }
    /// ClassifierCounter-wise difference, for "what happened since".
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }
}

impl fmt::Display for Counters {
    /// `name=value` pairs separated by spaces: easy to read and to parse.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in ClassifierCounter::all().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", c.name(), self.get(c))?;
        }
        Ok(())
    }
}

/// The classifier, loaded into the kernel and optionally attached.
pub struct Classifier {
    ebpf: Ebpf,
}

impl Classifier {
    pub fn load() -> Result<Self> {
        let mut ebpf = crate::ebpf::load()?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        crate::ebpf::loaded(PROGRAM, prog.load())?;
        Ok(Classifier { ebpf })
    }

    /// Attaches to `iface`; detached again when `self` is dropped.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let prog = program(&mut self.ebpf)?;
        prog.attach(iface, mode).map_err(|e| match e {
            ProgramError::UnknownInterface { name } => anyhow!("no interface named {name:?}"),
            e => anyhow!(e).context(format!("attaching {PROGRAM} to {iface} in {mode:?} mode")),
        })?;
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters> {
        let map =
            self.ebpf.map(names::COUNTERS).ok_or_else(|| anyhow!("map {} missing from the object", names::COUNTERS))?;
        let arr = PerCpuArray::<_, u64>::try_from(map)?;
        let mut out = Counters::default();
        for c in ClassifierCounter::all() {
            let per_cpu = arr.get(&c.index(), 0)?;
            out.0[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN; returns the
    /// XDP verdict.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = program(&mut self.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        let r =
            prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })?;
        Ok(r.return_value)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let p = ebpf.program_mut(PROGRAM).ok_or_else(|| anyhow!("program {PROGRAM} missing from the object"))?;
    Ok(p.try_into()?)
}
