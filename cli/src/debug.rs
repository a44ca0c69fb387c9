//! `cadre debug …`: hidden helpers for tests that need a real process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cadre_actors::controller::{AppendRequest, Controller, HistoryLimits, NewEvent};
use cadre_proto::v1::{OutputEmitted, event};
use clap::{Args, Subcommand};

use crate::Failure;

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Append to the event log forever from concurrent tasks, printing every acknowledged
    /// append as `ack CONVERSATION FIRST_SEQ LAST_SEQ BATCH_ID` (for crash tests).
    EventlogWriter(WriterArgs),
}

#[derive(Args)]
pub struct WriterArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Tag that makes this run's batch ids unique.
    #[arg(long)]
    run: String,
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    #[arg(long, default_value_t = 4)]
    conversations: usize,
}

pub async fn run(command: DebugCommand) -> Result<(), Failure> {
    let DebugCommand::EventlogWriter(args) = command;
    let (store, log) =
        cadre_cluster::store::open_embedded(&args.data_dir).context("open the event log")?;
    let controller = Controller::with_log(Arc::new(store), Arc::new(log), HistoryLimits::default());
    controller
        .start_detached()
        .await
        .context("start the controller")?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for task in 0..args.tasks {
        let controller = controller.clone();
        let out = out.clone();
        let run = args.run.clone();
        let conversations = args.conversations;
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let conversation = format!("c{}", (task + i) % conversations);
                let batch = format!("{run}-{task}-{i}");
                let n = 1 + i % 4;
                let events = (0..n)
                    .map(|k| NewEvent {
                        exec_id: String::new(),
                        kind: event::Kind::OutputEmitted(OutputEmitted {
                            text: format!("{batch}:{k}/{n}"),
                        }),
                    })
                    .collect();
                let request = AppendRequest {
                    conversation_id: conversation.clone(),
                    events,
                    idempotency_key: Some(batch.clone()),
                    open_exec: None,
                    owner: None,
                };
                let Ok(a) = controller.append(request).await else {
                    return;
                };
                let mut out = out.lock().expect("stdout");
                let _ = writeln!(
                    out,
                    "ack {conversation} {} {} {batch}",
                    a.first_seq, a.last_seq
                );
                let _ = out.flush();
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
