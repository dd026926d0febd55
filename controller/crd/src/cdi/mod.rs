//! Kiln's golden-image API, group `cdi.kiln.dev`, version `v1beta1`: DataVolume, DataSource and
//! DataImportCron with CDI's `cdi.kubevirt.io/v1beta1` field names and statuses, so CDI's
//! manifests run after changing their apiVersion; what Kiln lacks is refused by name.

pub mod data_import_cron;
pub mod data_source;
pub mod data_volume;
pub mod storage;

pub use data_import_cron::{DataImportCron, DataImportCronSpec, DataImportCronStatus};
pub use data_source::{DataSource, DataSourceSpec, DataSourceStatus};
pub use data_volume::{DataVolume, DataVolumePhase, DataVolumeSpec, DataVolumeStatus};

pub const CDI_GROUP: &str = "cdi.kiln.dev";
pub const CDI_VERSION: &str = "v1beta1";

/// Condition types CDI reports on DataVolumes, DataSources and DataImportCrons.
pub mod kind {
    /// DataVolume: its PVC is bound.
    pub const BOUND: &str = "Bound";
    /// DataVolume: an importer or clone pod is running.
    pub const RUNNING: &str = "Running";
    /// DataVolume: the data is in place; DataSource: it points at a complete import.
    pub const READY: &str = "Ready";
    /// DataImportCron: the DataSource holds the newest digest.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// DataImportCron: an import is running.
    pub const PROGRESSING: &str = "Progressing";
}
