//! Before InstanceStart: configuration requests build up the VM description. A config file is
//! the same requests in one document (`--config-file`, the `GET /vm/config` format).

use std::path::Path;

use api::models::{no_rate_limiter, ActionType, FullVmConfiguration};
use api::{ApiRequest, ApiResponse};
use devices::host_file::{open_checked, read_text, Accept};

use super::{RunState, VmmInfo, BEFORE_START};
use crate::metrics::MetricsSink;
use crate::resources::VmResources;
use crate::vmm_config::machine_config::host_mem_mib;
use crate::vmm_config::{BootSourceConfig, DriveConfig, MachineConfig, NetConfig};

/// What to do with a request that arrived before boot.
pub enum PrebootAction {
    Reply(ApiResponse),
    /// InstanceStart: build and boot the VM.
    Start,
}

/// The largest config file kiln-vmm reads (a VM's whole description is a few KiB).
const CONFIG_FILE_LIMIT: u64 = 1 << 20;

/// Checks that a file named in a request can be opened now and has the right type, as
/// Firecracker does; never waits on it (a FIFO is refused, not opened).
fn openable(what: &'static str, path: &Path, accept: Accept) -> Result<(), String> {
    open_checked(what, path, false, accept)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Applies one configuration request to `res`.
pub fn apply(res: &mut VmResources, info: &mut VmmInfo, req: &ApiRequest) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    match req {
        ApiRequest::PutMachineConfig(m) => {
            let mc = MachineConfig::try_from(m).map_err(|e| s(&e))?;
            mc.validate(host_mem_mib()).map_err(|e| s(&e))?;
            res.machine_config = mc;
        }
        ApiRequest::PatchMachineConfig(update) => {
            let merged = update.apply_to(&res.machine_config.to_api());
            return apply(res, info, &ApiRequest::PutMachineConfig(merged));
        }
        ApiRequest::PutBootSource(b) => {
            let bs = BootSourceConfig::try_from(b).map_err(|e| s(&e))?;
            openable("kernel image", &bs.kernel_image_path, Accept::Regular)?;
            if let Some(initrd) = &bs.initrd_path {
                openable("initrd", initrd, Accept::Regular)?;
            }
            res.boot_source = Some(bs);
        }
        ApiRequest::PutDrive(d) => {
            let drive = DriveConfig::try_from(d).map_err(|e| s(&e))?;
            openable("drive image", &drive.path_on_host, Accept::RegularOrBlock)?;
            res.set_drive(drive).map_err(|e| s(&e))?;
        }
        ApiRequest::PutNetworkInterface(n) => {
            let net = NetConfig::try_from(n).map_err(|e| s(&e))?;
            for other in res.nets.iter().filter(|o| o.iface_id != net.iface_id) {
                if other.tap == net.tap {
                    return Err(format!(
                        "network interfaces {} and {} use the same TAP device",
                        other.iface_id, net.iface_id
                    ));
                }
                if net.guest_mac.is_some() && other.guest_mac == net.guest_mac {
                    return Err(format!(
                        "network interfaces {} and {} have the same guest MAC",
                        other.iface_id, net.iface_id
                    ));
                }
            }
            res.set_net(net);
        }
        ApiRequest::PutEntropy(e) => {
            if !no_rate_limiter(&e.rate_limiter) {
                return Err("entropy device: rate limiters are not supported by kiln-vmm".into());
            }
            res.entropy = true;
        }
        ApiRequest::PutLogger(l) => {
            info.log.apply(l).map_err(|e| s(&e))?;
            res.logger = Some(l.clone());
        }
        ApiRequest::PutMetrics(m) => {
            if info.metrics.is_some() {
                return Err("metrics are already configured".into());
            }
            info.metrics = Some(MetricsSink::open(&m.metrics_path).map_err(|e| s(&e))?);
            res.metrics = Some(m.clone());
        }
        other => return Err(format!("not a configuration request: {other:?}")),
    }
    Ok(())
}

/// Handles a request that arrived before boot.
pub fn handle(res: &mut VmResources, info: &mut VmmInfo, req: &ApiRequest) -> PrebootAction {
    let state = RunState::NotStarted;
    if let Some(answer) = info.query(req, res, &state) {
        return PrebootAction::Reply(answer);
    }
    let reply = match req {
        ApiRequest::Action(ActionType::InstanceStart) => return PrebootAction::Start,
        ApiRequest::Action(ActionType::FlushMetrics) => {
            info.flush_metrics(&state, res.machine_config.vcpu_count)
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel)
        | ApiRequest::PatchDrive(_)
        | ApiRequest::PatchNetworkInterface(_)
        | ApiRequest::PatchVm(_) => Err(BEFORE_START.into()),
        other => apply(res, info, other),
    };
    PrebootAction::Reply(match reply {
        Ok(()) => ApiResponse::no_content(),
        Err(message) => ApiResponse::bad_request(message),
    })
}

/// Reads a `--config-file` into a VM description (every section applied as its PUT would be).
pub fn from_config_file(path: &Path, info: &mut VmmInfo) -> Result<VmResources, String> {
    let text = read_text("config file", path, CONFIG_FILE_LIMIT).map_err(|e| e.to_string())?;
    let cfg: FullVmConfiguration =
        serde_json::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let unsupported = cfg.unsupported_sections();
    if !unsupported.is_empty() {
        return Err(format!(
            "config file {}: kiln-vmm does not support {}",
            path.display(),
            unsupported.join(", ")
        ));
    }
    let mut res = VmResources::empty();
    let mut requests = Vec::new();
    // Logger first, so that the rest logs where the file says.
    requests.extend(cfg.logger.map(ApiRequest::PutLogger));
    requests.extend(cfg.metrics.map(ApiRequest::PutMetrics));
    requests.extend(cfg.boot_source.map(ApiRequest::PutBootSource));
    requests.extend(cfg.machine_config.map(ApiRequest::PutMachineConfig));
    requests.extend(cfg.drives.into_iter().map(ApiRequest::PutDrive));
    requests.extend(
        cfg.network_interfaces
            .into_iter()
            .map(ApiRequest::PutNetworkInterface),
    );
    requests.extend(cfg.entropy.map(ApiRequest::PutEntropy));
    for req in &requests {
        apply(&mut res, info, req).map_err(|e| format!("config file {}: {e}", path.display()))?;
    }
    res.boot_source()
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    Ok(res)
}

impl VmResources {
    /// The description in the `GET /vm/config` (and `--config-file`) format.
    pub fn to_api_config(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            boot_source: self.boot_source.as_ref().map(BootSourceConfig::to_api),
            machine_config: Some(self.machine_config.to_api()),
            drives: self.drives.iter().map(DriveConfig::to_api).collect(),
            network_interfaces: self.nets.iter().map(NetConfig::to_api).collect(),
            entropy: self.entropy.then(Default::default),
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
            ..Default::default()
        }
    }
}
