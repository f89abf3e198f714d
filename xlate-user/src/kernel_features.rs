//! What the running kernel offers of the optional features the agent uses,
//! probed once at start (as Cilium and libbpf do): the agent then takes the
//! path the kernel offers and says, one line per feature, what it does
//! without the ones it lacks. No optional feature is a load-time
//! requirement; verifiers differ between releases, helpers can be withheld
//! from a program type, and features arrive in later kernels.
//!
//! Every fallback can also be forced on a kernel that has the feature, so
//! that each path is tested on every kernel: `XLATE_WITHOUT=xdp-meta,tcx`
//! (a comma-separated list of [`Feature`] names; not in `--help`, it is
//! for tests, see docs/testing.md).

use std::sync::OnceLock;

use aya::programs::{ProgramType, SchedClassifier, TcAttachType};
use aya::sys::{is_helper_supported, BpfHelper};
use strum::{EnumIter, IntoEnumIterator, IntoStaticStr};

/// The environment variable that forces fallbacks (see the module).
pub const FORCE_WITHOUT: &str = "XLATE_WITHOUT";

/// An optional kernel feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Feature {
    /// `bpf_xdp_adjust_meta` in XDP programs: the translator's checksum
    /// notes ride in front of the frame.
    XdpMeta,
    /// TCX (Linux 6.6): TC programs attached through BPF links.
    Tcx,
    /// The `netdev` generic-netlink family's xdp-features (Linux 6.3):
    /// which devices can transmit frames redirected from XDP.
    XdpFeatures,
}

impl Feature {
    /// Every optional feature the agent probes.
    pub fn all() -> impl Iterator<Item = Feature> {
        Feature::iter()
    }

    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What the agent does without it, for the operator.
    pub fn without(self) -> &'static str {
        match self {
            Feature::XdpMeta => {
                "the translator's checksum notes for the TC stage go through a map (GW_CHECKSUM_NOTES) instead of \
                 XDP metadata: one map update per segment whose checksum field is ambiguous"
            }
            Feature::Tcx => {
                "TC programs are attached as classic cls_bpf filters on a clsact qdisc (netlink); they survive the \
                 agent as they are, and the next run replaces them in place"
            }
            Feature::XdpFeatures => {
                "without xdp-features the agent cannot tell which devices take redirected frames: the kernel \
                 forwards every rewritten frame (no XDP redirect)"
            }
        }
    }
}

/// What the kernel offers, probed once per process.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    pub xdp_meta: bool,
    pub tcx: bool,
    pub xdp_features: bool,
}

impl Features {
    pub fn has(&self, f: Feature) -> bool {
        match f {
            Feature::XdpMeta => self.xdp_meta,
            Feature::Tcx => self.tcx,
            Feature::XdpFeatures => self.xdp_features,
        }
    }

    /// One line per feature the agent goes without (probed or forced).
    pub fn report(&self) -> Vec<String> {
        let forced = forced_off();
        Feature::iter()
            .filter(|f| !self.has(*f))
            .map(|f| {
                let why = if forced.contains(&f) {
                    format!("switched off by {FORCE_WITHOUT}")
                } else {
                    "not offered by this kernel".into()
                };
                format!("kernel feature {} {why}: {}", f.name(), f.without())
            })
            .collect()
    }

    /// Logs [`Self::report`], one line each, with the start-up lines (a
    /// fallback is how this kernel is run, not a fault).
    pub fn log(&self) {
        for line in self.report() {
            tracing::info!("{line}");
        }
    }
}

/// The features of this kernel, less those forced off (cached).
pub fn get() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        let off = forced_off();
        let on = |f: Feature, probe: fn() -> bool| !off.contains(&f) && probe();
        Features {
            xdp_meta: on(Feature::XdpMeta, probe_xdp_meta),
            tcx: on(Feature::Tcx, probe_tcx),
            xdp_features: on(Feature::XdpFeatures, probe_xdp_features),
        }
    })
}

/// The features named in [`FORCE_WITHOUT`]. An unknown name is reported
/// and otherwise ignored.
fn forced_off() -> Vec<Feature> {
    let Ok(list) = std::env::var(FORCE_WITHOUT) else { return Vec::new() };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|name| {
            let f = Feature::iter().find(|f| f.name() == name);
            if f.is_none() {
                let known: Vec<&str> = Feature::iter().map(Feature::name).collect();
                tracing::warn!("{FORCE_WITHOUT}: unknown feature {name:?} (known: {})", known.join(", "));
            }
            f
        })
        .collect()
}

/// Loads a two-instruction XDP program that calls the helper: the
/// verifier's answer is the kernel's.
fn probe_xdp_meta() -> bool {
    is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_meta).unwrap_or(false)
}

/// Asks for the TCX programs of the loopback device (every network
/// namespace has one): kernels before 6.6 know no such attach type.
fn probe_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

fn probe_xdp_features() -> bool {
    crate::xdp_features::devices().is_ok()
}
