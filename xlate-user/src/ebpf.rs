//! The kernel programs, embedded in the agent at build time, and how their
//! maps are created or adopted.
//!
//! The flow engine's maps are pinned by name (see `xlate-ebpf`'s
//! `engine/maps.rs`). An agent loads the object with its pin directory:
//! maps already pinned there, by an earlier run of the agent whose
//! programs still translate, are adopted, so that a restart or an upgrade
//! loses no flow; the others are created and pinned. Before adopting a map
//! the agent checks that its layout (type, key and value size, entries) is
//! the one this build's programs expect: a map that changed is migrated
//! where that is safe (the counters) and otherwise the start is refused,
//! never silently recreated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{MapData, MapInfo, PerCpuArray, PerCpuValues};
use aya::{Ebpf, EbpfLoader};
use aya_obj::maps::PinningType;
use xlate_common::flow::names;

/// The object built from `xlate-ebpf` for bpfel-unknown-none.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XLATE_EBPF_OBJECT"));

/// Loads the object with fresh maps of its own (tests, `watch`,
/// benchmarks): they are pinned in a private directory only for as long as
/// loading takes.
pub fn load() -> Result<Ebpf> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = crate::agent::pins::base_for_loading()?.join(format!(
        "load-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let r = load_in(&dir, None);
    remove_pins(&dir);
    r
}

/// Gives an object that no agent runs (fixtures, benchmarks) the room for
/// new flows a fresh agent gives it (`flow::room`): `budget`'s budget and
/// hard limit of half-open flows, and no fast-path limit.
pub fn fresh_room(ebpf: &mut Ebpf, budget: xlate_common::flow::SynBudget) -> Result<()> {
    use xlate_common::flow::room;
    let map = ebpf.map_mut(names::ROOM).ok_or_else(|| anyhow!("map {} missing", names::ROOM))?;
    let mut r: aya::maps::Array<_, i64> = aya::maps::Array::try_from(map)?;
    r.set(room::BUDGET, budget.budget as i64, 0)?;
    r.set(room::HALF_OPEN, budget.hard as i64, 0)?;
    r.set(room::FAST_PATH, room::UNLIMITED, 0)?;
    Ok(())
}

/// A loaded object whose maps live in a pin directory.
pub struct Resident {
    pub ebpf: Ebpf,
    /// The flow tables were already there (an earlier run's): they carry
    /// live flows, and their flow-ID counters must not be reset.
    pub adopted: bool,
}

/// The per-flow tables, whose size the operator may set (`max_flows`).
const FLOW_TABLES: [&str; 5] = [names::FLOWS, names::TUPLES, names::PEERS, names::REOPENED, names::AGENT_CTL];

/// How many entries flow table `name` has for `max_flows` flows: `FLOWS`
/// has slots, a power of two (see `flow_slot`); the others one per flow.
fn table_entries(name: &str, max_flows: u32) -> u32 {
    if name == names::FLOWS {
        xlate_common::flow::flow_slot::slots(max_flows)
    } else {
        max_flows
    }
}

/// Loads the object with its maps pinned in `dir`, adopting the maps an
/// earlier run left there once their layout is checked (see the module).
/// `max_flows` sizes the flow tables (the object's default when `None`).
pub fn load_resident(dir: &Path, max_flows: Option<u32>) -> Result<Resident> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let adopted = dir.join(names::FLOWS).exists();
    let migrations = check_layouts(dir, max_flows)?;
    let mut ebpf = load_in(dir, max_flows)?;
    for m in migrations {
        m.finish(&mut ebpf)?;
    }
    Ok(Resident { ebpf, adopted })
}

fn load_in(dir: &Path, max_flows: Option<u32>) -> Result<Ebpf> {
    raise_memlock();
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(dir);
    if let Some(n) = max_flows {
        for t in FLOW_TABLES {
            loader.map_max_entries(t, table_entries(t, n));
        }
    }
    loader.load(OBJECT).context("loading the embedded eBPF object (are you root?)")
}

/// What became of loading program `name` (`prog.load()`), for an operator:
/// the verifier's refusal as one line naming the program, the kernel and
/// the verifier's last word, with the whole log written to a file (and to
/// the debug log) rather than shown first.
pub fn loaded(name: &str, r: std::result::Result<(), aya::programs::ProgramError>) -> Result<()> {
    let Err(e) = r else { return Ok(()) };
    let aya::programs::ProgramError::LoadError { io_error, verifier_log } = &e else {
        return Err(anyhow!(e).context(format!("loading {name}")));
    };
    let log = verifier_log.to_string();
    tracing::debug!("the verifier's log for {name}:\n{log}");
    // The verifier's verdict comes before its statistics.
    let stats = ["processed ", "verification time", "stack depth", "max_states_per_insn"];
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !stats.iter().any(|s| l.starts_with(s)))
        .unwrap_or("")
        .trim();
    let file = std::env::temp_dir().join(format!("xlate-verifier-{name}.log"));
    let saved = match std::fs::write(&file, &log) {
        Ok(()) => format!("the verifier's whole log is in {}", file.display()),
        Err(_) => "run with RUST_LOG=debug for the verifier's whole log".to_string(),
    };
    bail!(
        "the kernel ({}) refused the program {name} ({io_error}): \"{last}\"; {saved}. The kernels xlate is \
         tested on are listed in docs/operations.md (\"Supported kernels\")",
        kernel_release()
    )
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Removes every pin in `dir`, and `dir`.
pub fn remove_pins(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A pinned map's layout, as the kernel has it or as the object wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl Layout {
    /// How `self` (the pinned map) differs from `want`, in words.
    fn differences(&self, want: &Layout) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |what: &str, have: u32, want: u32| {
            if have != want {
                d.push(format!("{what} {have} where this build expects {want}"));
            }
        };
        cmp("type", self.map_type, want.map_type);
        cmp("key size", self.key_size, want.key_size);
        cmp("value size", self.value_size, want.value_size);
        cmp("max entries", self.max_entries, want.max_entries);
        d
    }
}

/// A map that changed layout in a way the agent carries over itself.
struct Migration {
    name: &'static str,
    old: PathBuf,
}

impl Migration {
    /// Copies what the old map held into the new one, then drops the old.
    fn finish(self, ebpf: &mut Ebpf) -> Result<()> {
        if self.name == names::COUNTERS {
            let old: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
                MapData::from_pin(&self.old).with_context(|| format!("opening {}", self.old.display()))?,
            ))?;
            let mut new: PerCpuArray<&mut MapData, u64> =
                PerCpuArray::try_from(ebpf.map_mut(names::COUNTERS).ok_or_else(|| anyhow!("counters missing"))?)?;
            let n = old.len().min(new.len());
            for i in 0..n {
                if let Ok(v) = old.get(&i, 0) {
                    let vals: Vec<u64> = v.iter().copied().collect();
                    new.set(i, PerCpuValues::try_from(vals)?, 0)?;
                }
            }
            tracing::info!("counters carried over into a table of {} (was {})", new.len(), old.len());
        }
        let _ = std::fs::remove_file(&self.old);
        Ok(())
    }
}

/// Compares every pinned map in `dir` with the object's definition.
/// Counters that only grew or shrank are set aside for migration (renamed,
/// so that loading creates the new map); any other change refuses.
fn check_layouts(dir: &Path, max_flows: Option<u32>) -> Result<Vec<Migration>> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| anyhow!("parsing the embedded eBPF object: {e}"))?;
    let mut migrations = Vec::new();
    let mut refused = Vec::new();
    for (name, def) in &obj.maps {
        if !matches!(def.pinning(), PinningType::ByName) {
            continue;
        }
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).with_context(|| format!("reading the pinned map {}", path.display()))?;
        let have = Layout {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        let want = Layout {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: match max_flows {
                Some(n) if FLOW_TABLES.contains(&name.as_str()) => table_entries(name, n),
                _ => def.max_entries(),
            },
        };
        if have == want {
            continue;
        }
        let only_size = Layout { max_entries: want.max_entries, ..have } == want;
        if name == names::COUNTERS && only_size {
            let old = dir.join(format!("{name}_old"));
            let _ = std::fs::remove_file(&old);
            std::fs::rename(&path, &old).with_context(|| format!("setting {} aside", path.display()))?;
            migrations.push(Migration { name: names::COUNTERS, old });
            continue;
        }
        refused.push(format!("{name}: {}", have.differences(&want).join(", ")));
    }
    if !refused.is_empty() {
        bail!(
            "the maps pinned in {} come from a build whose layout differs from this one's, so their flows cannot be \
             carried over:\n  {}\nStop the running datapath for good first (`xlate-user stop` or `xlate-user host \
             stop`, which resets every flow), then start this build.",
            crate::agent::pins::shown(dir),
            refused.join("\n  ")
        );
    }
    Ok(migrations)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail there. Newer kernels ignore it.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
