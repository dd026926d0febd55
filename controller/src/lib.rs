//! Kiln's controller: VirtualMachines become VirtualMachineInstances per their run strategy,
//! each VMI one launcher pod; DataVolumes, DataSources and DataImportCrons (golden images)
//! become claims filled by importer pods; the launcher channel, metrics and leader election
//! beside them; and the `kubectl kiln` plugin's commands.

pub mod boot_images;
pub mod context;
pub mod dataimportcron;
pub mod datasource;
pub mod datavolume;
pub mod golden;
pub mod kubectl;
pub mod launcher_watch;
pub mod metrics;
pub mod run;
pub mod token;
pub mod vm;
pub mod vmi;
