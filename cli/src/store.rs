//! `cadre store …`: event log stores, offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cadre_actors::config::{DEFAULT_LEASE_TTL, FoundationdbStore};
use cadre_actors::controller::copy::{CopyError, copy};
use cadre_actors::controller::{Controller, HistoryLimits};
use cadre_actors::store::Store;
use cadre_cluster::store::{SqliteStore, open_embedded, open_foundationdb};
use clap::Subcommand;
use serde_json::json;

use crate::progress::Progress;
use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped node's whole event log (conversations, spawned actors, audit) into
    /// another store, then check the copy: the conversations, each one's last seq, the events,
    /// the idempotency records and the open execs must match. Commit log records the node left
    /// are replayed first. A destination that holds a log already is refused unless --force
    /// (which replaces it), and so is one a running cluster's controller holds.
    ///
    /// Destinations: `foundationdb:CLUSTER_FILE` (builds with the `foundationdb` feature; the
    /// keys go to the directory [--prefix, --cluster]), or `sqlite:PATH` (a file for
    /// `store.shared_sqlite`).
    Copy {
        /// The node's data dir (the node must be stopped).
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// Where to: `foundationdb:CLUSTER_FILE` or `sqlite:PATH`.
        #[arg(long, value_name = "STORE")]
        to: String,
        /// The name of the cluster that will use the copy (`cluster.name`): FoundationDB
        /// keeps each cluster's log in a directory of its own.
        #[arg(long, default_value = "cadre")]
        cluster: String,
        /// The first element of the FoundationDB directory (`store.foundationdb.prefix`).
        #[arg(long, default_value = "cadre")]
        prefix: String,
        /// Replace what the destination holds.
        #[arg(long)]
        force: bool,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

pub async fn run(command: StoreCommand) -> Result<(), Failure> {
    let StoreCommand::Copy {
        from,
        to,
        cluster,
        prefix,
        force,
        output,
    } = command;
    let destination = open_destination(&to, &cluster, &prefix)?;
    let source = at_rest(&from).await?;
    let started = Instant::now();
    let census = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut progress = Progress::new("copying (then checking the copy)", "keys", None);
        let copied = copy(
            source.as_ref(),
            destination.as_ref(),
            force,
            now,
            &mut |keys| progress.set(keys),
        );
        progress.finish();
        copied
    })
    .await
    .context("the copy task failed")?
    .map_err(|e| match e {
        CopyError::NotEmpty(_) | CopyError::Leased(_) => {
            Failure::Usage(format!("cadre: {to}: {e}"))
        }
        e => Failure::Runtime(anyhow::anyhow!("{to}: {e}")),
    })?;
    let events = census.events;
    match output {
        Output::Json | Output::Yaml => crate::emit(
            output,
            &json!({
                "from": from.display().to_string(), "to": to,
                "conversations": census.conversations.len(), "events": events,
                "idempotency_keys": census.idempotency_keys, "open_execs": census.open_execs,
                "seconds": started.elapsed().as_secs_f64(), "verified": true,
            }),
        ),
        Output::Text => println!(
            "copied {} conversations, {events} events, {} idempotency records and {} open execs \
             from {} to {to} in {:.1} s; the copy matches its source",
            census.conversations.len(),
            census.idempotency_keys,
            census.open_execs,
            from.display(),
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

/// The store `to` names.
fn open_destination(to: &str, cluster: &str, prefix: &str) -> Result<Arc<dyn Store>, Failure> {
    let usage = |why: String| Failure::Usage(format!("cadre: --to {to}: {why}"));
    match to.split_once(':') {
        Some(("foundationdb", file)) if !file.is_empty() => {
            let config = FoundationdbStore {
                cluster_file: PathBuf::from(file),
                prefix: prefix.to_string(),
                lease_ttl: DEFAULT_LEASE_TTL,
            };
            open_foundationdb(&config, cluster).map_err(|e| usage(e.to_string()))
        }
        Some(("sqlite", path)) if !path.is_empty() => Ok(Arc::new(
            SqliteStore::open_shared(std::path::Path::new(path), None)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("--to {to}: {e}")))?,
        )),
        _ => Err(usage(
            "give foundationdb:CLUSTER_FILE or sqlite:PATH".into(),
        )),
    }
}

/// The store of the node whose data dir is `data_dir`, with its commit log replayed.
async fn at_rest(data_dir: &std::path::Path) -> Result<Arc<dyn Store>, Failure> {
    if !data_dir.join(cadre_cluster::store::MAIN_FILE).exists() {
        return Err(Failure::Usage(format!(
            "cadre: --from {}: not a node's data dir (no {})",
            data_dir.display(),
            cadre_cluster::store::MAIN_FILE
        )));
    }
    let (store, log) = open_embedded(data_dir)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("--from {}: {e}", data_dir.display())))?;
    let store: Arc<dyn Store> = Arc::new(store);
    let controller = Controller::with_log(store.clone(), Arc::new(log), HistoryLimits::default());
    let actor = controller
        .start_detached()
        .await
        .map_err(|e| anyhow::anyhow!("cannot replay {}: {e}", data_dir.display()))?;
    actor
        .stop_and_wait(None, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot stop the replay: {e}"))?;
    drop(controller);
    Ok(store)
}
