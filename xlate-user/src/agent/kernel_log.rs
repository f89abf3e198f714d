//! Kernel debug logging: the kernel programs' aya-log lines, printed by
//! the agent through `tracing`. The programs stay silent until an
//! operator switches logging on (`xlate-user kernel-log on --iface …`,
//! which sets `config_flag::KERNEL_LOG` in the running agent's
//! configuration map); `off` silences them again. Nothing is reloaded.
//!
//! A kernel line carries numbers only (hook, verdict, protocol, counter
//! index, addresses); this module names them:
//!
//! ```text
//! kernel: xdp dropped drop_bad_checksum: 10.10.0.11 -> 10.10.0.1 proto 144
//! ```

use anyhow::{anyhow, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use xlate_common::flow::{config_flag, Counter, Hook, Logged};

use super::maps::FlowMaps;

/// Reads the kernel's log ring (poll its fd; `flush` when readable).
pub type Reader = EbpfLogger<KernelLines>;

/// Takes the kernel log ring out of the loaded object.
pub fn reader(ebpf: &mut Ebpf) -> Result<Reader> {
    EbpfLogger::init_with_logger(ebpf, KernelLines).map_err(|e| anyhow!("kernel log ring: {e}"))
}

/// Switches the kernel programs' logging on or off.
pub fn set(maps: &mut FlowMaps, on: bool) -> Result<()> {
    let mut cfg = maps.config.get(&0, 0)?;
    if on {
        cfg.flags |= config_flag::KERNEL_LOG;
    } else {
        cfg.flags &= !config_flag::KERNEL_LOG;
    }
    maps.config.set(0, cfg, 0)?;
    Ok(())
}

/// The `log::Log` aya-log hands kernel records to.
pub struct KernelLines;

impl log::Log for KernelLines {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        match describe(&text) {
            Some(line) => tracing::info!("kernel: {line}"),
            None => tracing::info!("kernel: {text}"),
        }
    }

    fn flush(&self) {}
}

/// `hook=1 what=3 proto=144 reason=10 src=… dst=…` in words.
pub fn describe(text: &str) -> Option<String> {
    let field = |k: &str| text.split_whitespace().find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let num = |k: &str| field(k).and_then(|v| v.parse::<u32>().ok());
    let hook: &str = Hook::from_repr(u8::try_from(num("hook")?).ok()?)?.into();
    let what: &str = Logged::from_repr(u8::try_from(num("what")?).ok()?)?.into();
    let reason = Counter::from_repr(num("reason")?)?.name();
    Some(format!("{hook} {what} {reason}: {} -> {} proto {}", field("src")?, field("dst")?, num("proto")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_are_named() {
        let reason = Counter::DropBadChecksum.index();
        let line = format!("hook=1 what=3 proto=144 reason={reason} src=10.10.0.11 dst=10.10.0.1");
        assert_eq!(describe(&line).unwrap(), "xdp dropped drop_bad_checksum: 10.10.0.11 -> 10.10.0.1 proto 144");
        let line = "hook=4 what=1 proto=6 reason=5 src=10.0.0.1 dst=10.0.0.2";
        assert_eq!(describe(line).unwrap(), "host-ingress translated ingress_translated: 10.0.0.1 -> 10.0.0.2 proto 6");
        assert_eq!(describe("hook=9 what=1 proto=6 reason=5 src=a dst=b"), None);
        assert_eq!(describe("garbage"), None);
    }
}
