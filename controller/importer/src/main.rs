//! kiln-importer: the one process of a DataVolume's importer or clone pod. It fills the claim
//! mounted at --target from the source, sparse, verifies what it read, serves its progress, and
//! ends with a termination message the controller reads (exit 1: try again; 2: give up).

mod error;
mod format;
mod http;
mod progress;
mod registry;
mod serve;
mod sparse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tracing::{error, info};

use crate::error::ImportError;
use crate::format::{Target, Written};
use crate::progress::Progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    Registry,
    Http,
    Pvc,
    Blank,
}

#[derive(Parser, Debug)]
#[command(version, about = "Fills a DataVolume's claim (Kiln's CDI importer)")]
struct Args {
    #[arg(long, value_enum)]
    source: SourceKind,
    /// registry: docker://host/repository[:tag|@digest]; http: the image's URL.
    #[arg(long)]
    url: Option<String>,
    /// http: sha256:HEX or sha512:HEX of the bytes served.
    #[arg(long)]
    checksum: Option<String>,
    /// pvc: the source disk (a claim's disk.img, or its device).
    #[arg(long)]
    source_path: Option<PathBuf>,
    /// The disk to write: disk.img on the volume, or the block device (not when serving).
    #[arg(long)]
    target: Option<PathBuf>,
    /// pvc: serve --source-path on this address to the importer presenting the token in
    /// KILN_CLONE_TOKEN (a clone across namespaces), instead of copying it to --target.
    #[arg(long)]
    serve: Option<SocketAddr>,
    /// The target is a block device.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    block: bool,
    /// Bytes the disk may take (a file is extended to this).
    #[arg(long)]
    capacity: Option<u64>,
    /// Where qcow2 images are staged for conversion.
    #[arg(long, default_value = "/scratch")]
    scratch: PathBuf,
    /// Registries spoken to over plain http (host:port), as CDI's insecureRegistries.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    #[arg(long, default_value = "0.0.0.0:8443")]
    progress_addr: SocketAddr,
    /// The DataVolume's UID (the progress metric's label).
    #[arg(long, default_value = "")]
    owner_uid: String,
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

/// What the controller reads from the pod's termination message.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    virtual_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    transient: bool,
}

/// The disk to fill, if --target was given.
fn target_of(args: &Args) -> Option<Target> {
    Some(Target {
        path: args.target.clone()?,
        block: args.block,
        capacity: args.capacity,
        scratch: args.scratch.clone(),
    })
}

async fn run(args: &Args, progress: Arc<Progress>) -> Result<Outcome, ImportError> {
    if let Some(addr) = args.serve {
        let (SourceKind::Pvc, Some(disk)) = (args.source, args.source_path.clone()) else {
            return Err(ImportError::Format(
                "--serve needs --source pvc and --source-path".into(),
            ));
        };
        let token = std::env::var(serve::TOKEN_ENV).unwrap_or_default();
        serve::serve(addr, disk, token, progress).await?;
        return Ok(Outcome::default());
    }
    let target =
        target_of(args).ok_or_else(|| ImportError::Format("--target is required".into()))?;
    let url = || {
        args.url
            .clone()
            .ok_or_else(|| ImportError::Format("--url is required for this source".into()))
    };
    let (w, written, digest) = match args.source {
        SourceKind::Registry => {
            let (w, written, digest) =
                registry::import(&url()?, &args.insecure_registries, &target, progress).await?;
            (w, written, Some(digest))
        }
        SourceKind::Http => {
            let checksum = args
                .checksum
                .as_deref()
                .map(http::Checksum::parse)
                .transpose()?;
            http::import(&url()?, checksum, &target, progress).await?
        }
        SourceKind::Pvc => {
            let src = args
                .source_path
                .clone()
                .ok_or_else(|| ImportError::Format("--source-path is required for pvc".into()))?;
            let t = target.clone();
            let (w, size) = tokio::task::spawn_blocking(move || {
                let p = progress.clone();
                if let Ok(m) = std::fs::metadata(&src) {
                    p.total.store(m.len(), std::sync::atomic::Ordering::Relaxed);
                }
                format::copy_claim(&src, &t, &|n| progress.add(n))
            })
            .await
            .map_err(|e| ImportError::Source(format!("clone task: {e}")))??;
            let written = Written {
                format: format::Format::Raw,
                virtual_size: size,
            };
            (w, written, None)
        }
        SourceKind::Blank => {
            let size = args
                .capacity
                .ok_or_else(|| ImportError::Format("--capacity is required for blank".into()))?;
            let w = target.open().map_err(ImportError::write)?;
            let written = Written {
                format: format::Format::Raw,
                virtual_size: size,
            };
            (w, written, None)
        }
    };
    target.commit(w, written.virtual_size)?;
    Ok(Outcome {
        message: match args.source {
            SourceKind::Pvc => "Clone Complete".into(),
            _ => "Import Complete".into(),
        },
        digest,
        virtual_size: Some(written.virtual_size),
        format: Some(format!("{:?}", written.format).to_ascii_lowercase()),
        transient: false,
    })
}

fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let progress = Arc::new(Progress::default());
    let result = rt.block_on(async {
        tokio::spawn(progress::serve(
            args.progress_addr,
            progress.clone(),
            args.owner_uid.clone(),
        ));
        run(&args, progress.clone()).await
    });
    let (outcome, code) = match result {
        Ok(o) => {
            info!(
                "{} ({} bytes)",
                o.message,
                o.virtual_size.unwrap_or_default()
            );
            (o, 0)
        }
        Err(e) => {
            if let Some(target) = target_of(&args) {
                target.discard();
            }
            error!("{e}");
            let transient = e.transient();
            (
                Outcome {
                    message: e.to_string(),
                    transient,
                    ..Default::default()
                },
                if transient { 1 } else { 2 },
            )
        }
    };
    let mut text = serde_json::to_string(&outcome).unwrap_or_default();
    // The kubelet keeps at most 4096 bytes of it.
    text.truncate(4000);
    if let Err(e) = std::fs::write(&args.termination_log, text) {
        error!("writing {}: {e}", args.termination_log.display());
    }
    std::process::exit(code);
}
