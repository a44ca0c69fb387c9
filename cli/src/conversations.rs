//! `cadre exec`, `cadre fork` and `cadre conversations …`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::client::Api;
use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::{
    AgentPatch, ApproveRequest, CancelRequest, Conversation, DeleteConversationRequest, Event,
    ExecRequest, ExecState, ForkRequest, GetConversationRequest, ListConversationsRequest,
    SubscribeRequest, event,
};
use clap::{Args, Subcommand};
use serde_json::json;
use tonic::Streaming;

use crate::client::{ServerArgs, connect};
use crate::{Failure, Output};
use cadre_proto::json::{describe, exec_state_name, rfc3339};

#[derive(Args)]
pub struct ExecArgs {
    /// The agent to run: an `agent` of the node's config, or the built-in `echo`.
    #[arg(long)]
    agent: Option<String>,
    /// The input; `-` reads it from stdin. Leave it out to reconnect to a conversation's exec
    /// (with --last-seq).
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input from this file (for inputs longer than a command line holds).
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Continue this conversation (default: a new one).
    #[arg(long)]
    conversation: Option<String>,
    /// Continue the conversation's unfinished exec.
    #[arg(long)]
    resume: bool,
    /// Reconnecting: the last seq already seen; only later events are printed.
    #[arg(long, default_value_t = 0)]
    last_seq: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ForkArgs {
    /// The conversation to branch.
    #[arg(long)]
    conversation: String,
    /// Keep events 1..N, N ≥ 1 (default: all the conversation has now).
    #[arg(long)]
    at_seq: Option<u64>,
    /// The new conversation's id (default: generated).
    #[arg(long)]
    to: Option<String>,
    /// A YAML file of changes to the agent for the new branch: `system_prompt`, `model`,
    /// `max_iterations`, `token_budget`.
    #[arg(long)]
    patch: Option<std::path::PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The conversation whose exec waits for an approval.
    #[arg(long)]
    conversation: String,
    /// Only if the exec waits on this call (`STEP.INDEX`, as in its ToolCalled).
    #[arg(long)]
    call: Option<String>,
    /// Decline the call instead: the agent gets an error for it and goes on.
    #[arg(long)]
    decline: bool,
    /// Recorded with the decision.
    #[arg(long, default_value = "")]
    reason: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    /// The conversation whose unfinished exec to cancel.
    #[arg(long)]
    conversation: String,
    /// Only if this is the unfinished exec (refused otherwise).
    #[arg(long)]
    exec: Option<String>,
    /// Recorded in the exec's CANCELLED state change.
    #[arg(long, default_value = "")]
    reason: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
pub enum ConversationsCommand {
    /// List conversations with their last seq.
    Ls {
        /// Show conversations after this id (paging).
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One conversation: last seq, latest exec and its state, fork origin.
    Show {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The conversation's events (JSON lines with -o json).
    Log {
        id: String,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Keep streaming new events until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a conversation and all its events (refused while an exec runs in it; forks stay).
    #[command(alias = "rm")]
    Delete {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn status(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{call} failed: {:?}: {}",
        s.code(),
        in_flags(call, s.message())
    )
}

/// Usage errors the server found (bad or missing fields, a write it does not allow) exit 2;
/// everything else exits 1. The server's field names become the command's flags.
pub(crate) fn failure(call: &str, s: tonic::Status) -> Failure {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            Failure::Usage(format!("cadre: {call}: {}", in_flags(call, s.message())))
        }
        _ => Failure::Runtime(status(call, s)),
    }
}

/// The request fields a call's messages may name, and the flag (or argument) a user of the
/// command that makes the call typed for each.
fn flags_of(call: &str) -> &'static [(&'static str, &'static str)] {
    match call {
        "Exec" => &[
            ("conversation_id", "--conversation"),
            ("agent_id", "--agent"),
            ("input", "--input"),
            ("last_seq", "--last-seq"),
            ("after_seq", "--last-seq"),
            ("resume", "--resume"),
        ],
        "Fork" => &[
            ("src_conversation_id", "--conversation"),
            ("conversation_id", "--conversation"),
            ("dest_conversation_id", "--to"),
            ("at_seq", "--at-seq"),
            ("patch", "--patch"),
        ],
        "Approve" => &[("conversation_id", "--conversation"), ("call_id", "--call")],
        "Cancel" => &[("conversation_id", "--conversation"), ("exec_id", "--exec")],
        "Subscribe" => &[("conversation_id", "ID"), ("after_seq", "--after-seq")],
        "Get" | "Delete" => &[("conversation_id", "ID")],
        "List" => &[("after", "--after"), ("limit", "--limit")],
        "Tools.Call" => &[
            ("conversation_id", "--conversation"),
            ("arguments_json", "--args"),
            ("approved", "--approve"),
        ],
        _ => &[],
    }
}

/// `message` with each whole-word field name of `call`'s request replaced by its flag.
fn in_flags(call: &str, message: &str) -> String {
    let mut out = message.to_string();
    // Longest first, so that `src_conversation_id` is not taken for `conversation_id`.
    let mut flags = flags_of(call).to_vec();
    flags.sort_by_key(|(field, _)| std::cmp::Reverse(field.len()));
    for (field, flag) in flags {
        out = replace_word(&out, field, flag);
    }
    out
}

/// `text` with every occurrence of `word` that is not part of a longer identifier replaced.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().last().or_else(|| out.chars().last());
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// The exec's input: `--input TEXT`, `--input -` (stdin) or `--input-file FILE`.
fn read_input(input: Option<String>, file: Option<&Path>) -> Result<Option<String>, Failure> {
    let read = |what: &str, text: std::io::Result<String>| {
        text.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Failure::Usage(format!("cadre exec: {what}: not found"))
            }
            std::io::ErrorKind::InvalidData => {
                Failure::Usage(format!("cadre exec: {what}: not UTF-8 text"))
            }
            _ => Failure::Usage(format!("cadre exec: {what}: {e}")),
        })
    };
    match (input, file) {
        (_, Some(file)) => {
            read(&file.display().to_string(), std::fs::read_to_string(file)).map(Some)
        }
        (Some(dash), None) if dash == "-" => {
            let mut text = String::new();
            read(
                "stdin",
                std::io::stdin().read_to_string(&mut text).map(|_| text),
            )
            .map(Some)
        }
        (input, None) => Ok(input),
    }
}

async fn client(server: &ServerArgs) -> Result<ConversationsClient<Api>, Failure> {
    Ok(ConversationsClient::new(connect(server).await?)
        .max_decoding_message_size(server.max_message_bytes)
        .max_encoding_message_size(server.max_message_bytes))
}

pub async fn exec(mut args: ExecArgs) -> Result<(), Failure> {
    args.input = read_input(args.input.take(), args.input_file.as_deref())?;
    if args.input.is_none() && args.conversation.is_none() {
        return Err(Failure::Usage(
            "cadre exec: give --input to start an exec, or --conversation (with --last-seq or \
             --resume) to reconnect"
                .into(),
        ));
    }
    // The request carries the input and a few ids; what does not fit is refused here, before
    // anything is sent.
    if let Some(input) = &args.input
        && input.len() + 1024 > args.server.max_message_bytes
    {
        return Err(Failure::Usage(format!(
            "cadre exec: input: {} bytes, over the message limit of {} bytes \
             (--max-message-bytes, and the node's api.max_message_bytes)",
            input.len(),
            args.server.max_message_bytes
        )));
    }
    if args.input.is_some() && args.agent.is_none() {
        return Err(Failure::Usage(
            "cadre exec: --agent is required with --input".into(),
        ));
    }
    let mut client = client(&args.server).await?;
    let request = ExecRequest {
        conversation_id: args.conversation.clone().unwrap_or_default(),
        agent_id: args.agent.unwrap_or_default(),
        input: args.input.unwrap_or_default(),
        last_seq: args.last_seq,
        resume: args.resume,
    };
    let stream = client
        .exec(request)
        .await
        .map_err(|s| failure("Exec", s))?
        .into_inner();
    let streamed = print_stream(stream, args.output, true).await?;
    let conversation = streamed
        .conversation
        .or(args.conversation)
        .unwrap_or_default();
    eprintln!(
        "conversation={conversation} seq={}",
        streamed.last.unwrap_or(args.last_seq)
    );
    match streamed.failed {
        Some(why) => Err(Failure::Runtime(anyhow::anyhow!(why))),
        None => Ok(()),
    }
}

pub async fn fork(args: ForkArgs) -> Result<(), Failure> {
    let patch = args.patch.as_deref().map(read_patch).transpose()?;
    let mut client = client(&args.server).await?;
    // Without --at-seq the branch keeps everything the conversation has now.
    let at_seq = match args.at_seq {
        Some(at) => at,
        None => {
            client
                .get(GetConversationRequest {
                    conversation_id: args.conversation.clone(),
                })
                .await
                .map_err(|s| failure("Fork", s))?
                .into_inner()
                .last_seq
        }
    };
    let c = client
        .fork(ForkRequest {
            src_conversation_id: args.conversation,
            at_seq,
            dest_conversation_id: args.to.unwrap_or_default(),
            patch,
        })
        .await
        .map_err(|s| failure("Fork", s))?
        .into_inner();
    print_conversation(&c, args.output);
    Ok(())
}

/// The fields a fork patch may set.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchFile {
    system_prompt: Option<String>,
    model: Option<String>,
    max_iterations: Option<u32>,
    token_budget: Option<u64>,
}

fn read_patch(path: &std::path::Path) -> Result<AgentPatch, Failure> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cadre: {file}: cannot read: {e}")))?;
    let node = marked_yaml::parse_yaml(0, &text)
        .map_err(|e| Failure::Usage(format!("cadre: {file}: {e}")))?;
    let p: PatchFile = marked_yaml::from_node(&node).map_err(|e| {
        // An unknown field's error carries no place: find its key.
        let key_line = match &*e {
            marked_yaml::Error::UnknownFieldError(field, ..) => text
                .lines()
                .position(|l| l.trim_start().starts_with(&format!("{field}:")))
                .map(|i| format!("{}:1", i + 1)),
            _ => None,
        };
        let at = e
            .start_mark()
            .map(|m| format!("{}:{}", m.line(), m.column()))
            .or(key_line)
            .unwrap_or_else(|| "1:1".into());
        Failure::Usage(format!("cadre: {file}:{at}: {e}"))
    })?;
    Ok(AgentPatch {
        system_prompt: p.system_prompt,
        model: p.model,
        max_iterations: p.max_iterations,
        token_budget: p.token_budget,
    })
}

pub async fn approve(args: ApproveArgs) -> Result<(), Failure> {
    let mut client = client(&args.server).await?;
    let c = client
        .approve(ApproveRequest {
            conversation_id: args.conversation,
            call_id: args.call.unwrap_or_default(),
            approved: !args.decline,
            reason: args.reason,
        })
        .await
        .map_err(|s| failure("Approve", s))?
        .into_inner();
    print_conversation(&c, args.output);
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> Result<(), Failure> {
    let mut client = client(&args.server).await?;
    let c = client
        .cancel(CancelRequest {
            conversation_id: args.conversation,
            exec_id: args.exec.unwrap_or_default(),
            reason: args.reason,
        })
        .await
        .map_err(|s| failure("Cancel", s))?
        .into_inner();
    print_conversation(&c, args.output);
    Ok(())
}

pub async fn run(command: ConversationsCommand) -> Result<(), Failure> {
    match command {
        ConversationsCommand::Ls {
            after,
            limit,
            output,
            server,
        } => {
            let list = client(&server)
                .await?
                .list(ListConversationsRequest { after, limit })
                .await
                .map_err(|s| failure("List", s))?
                .into_inner();
            match output {
                Output::Json | Output::Yaml => {
                    for c in &list.conversations {
                        crate::emit(output, &cadre_proto::json::conversation(c));
                    }
                }
                Output::Text => {
                    println!("{:<40}  {:>8}", "CONVERSATION", "LAST SEQ");
                    for c in &list.conversations {
                        println!("{:<40}  {:>8}", c.conversation_id, c.last_seq);
                    }
                }
            }
        }
        ConversationsCommand::Delete { id, output, server } => {
            let deleted = client(&server)
                .await?
                .delete(DeleteConversationRequest {
                    conversation_id: id,
                })
                .await
                .map_err(|s| failure("Delete", s))?
                .into_inner();
            match output {
                Output::Json | Output::Yaml => crate::emit(
                    output,
                    &json!({"conversation_id": deleted.conversation_id, "events": deleted.events}),
                ),
                Output::Text => println!(
                    "conversation {} deleted ({} events)",
                    deleted.conversation_id, deleted.events
                ),
            }
        }
        ConversationsCommand::Show { id, output, server } => {
            let c = client(&server)
                .await?
                .get(GetConversationRequest {
                    conversation_id: id,
                })
                .await
                .map_err(|s| failure("Get", s))?
                .into_inner();
            print_conversation(&c, output);
        }
        ConversationsCommand::Log {
            id,
            after_seq,
            follow,
            output,
            server,
        } => {
            let mut client = client(&server).await?;
            let end = if follow {
                None
            } else {
                Some(
                    client
                        .get(GetConversationRequest {
                            conversation_id: id.clone(),
                        })
                        .await
                        .map_err(|s| failure("Get", s))?
                        .into_inner()
                        .last_seq,
                )
            };
            // Nothing after the end to print; past the end, Subscribe says OUT_OF_RANGE.
            if end == Some(after_seq) {
                return Ok(());
            }
            let mut stream = client
                .subscribe(SubscribeRequest {
                    conversation_id: id,
                    after_seq,
                })
                .await
                .map_err(|s| failure("Subscribe", s))?
                .into_inner();
            let mut reached_end = false;
            while let Some(e) = stream.message().await.map_err(|s| status("Subscribe", s))? {
                print_event(&e, output, false);
                if end.is_some_and(|end| e.seq >= end) {
                    reached_end = true;
                    break;
                }
            }
            // A follow ends by itself only when the node stops.
            if !reached_end {
                eprintln!(
                    "cadre: the node at {} stopped; the log ended",
                    server.server
                );
            }
        }
    }
    Ok(())
}

/// What a printed exec stream showed.
struct Streamed {
    conversation: Option<String>,
    last: Option<u64>,
    /// The exec ended FAILED or CANCELLED: why.
    failed: Option<String>,
}

/// Prints a stream of events; returns the conversation id and the last seq seen.
async fn print_stream(
    mut stream: Streaming<Event>,
    output: Output,
    outputs_only: bool,
) -> Result<Streamed, Failure> {
    let mut conversation = None;
    let mut last = None;
    let mut failed = None;
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                conversation.get_or_insert_with(|| e.conversation_id.clone());
                last = Some(e.seq);
                if let Some(event::Kind::ExecStateChanged(s)) = &e.kind {
                    failed = matches!(
                        ExecState::try_from(s.state),
                        Ok(ExecState::Failed | ExecState::Cancelled)
                    )
                    .then(|| {
                        format!(
                            "exec {} {}: {}",
                            e.exec_id,
                            exec_state_name(s.state),
                            s.reason
                        )
                    });
                }
                print_event(&e, output, outputs_only);
            }
            Ok(None) => {
                return Ok(Streamed {
                    conversation,
                    last,
                    failed,
                });
            }
            Err(s) => {
                if let (Some(c), Some(seq)) = (&conversation, last) {
                    eprintln!("conversation={c} seq={seq}");
                }
                return Err(Failure::Runtime(status("Exec", s)));
            }
        }
    }
}

fn print_event(e: &Event, output: Output, outputs_only: bool) {
    use std::io::Write;
    match output {
        Output::Json | Output::Yaml => crate::emit(output, &cadre_proto::json::event(e)),
        Output::Text if outputs_only => {
            if let Some(event::Kind::OutputEmitted(o)) = &e.kind {
                println!("{}", o.text);
            }
        }
        Output::Text => {
            let (kind, detail) = describe(e);
            println!(
                "{:>6}  {}  {:<14}  {:<18}  {}",
                e.seq,
                rfc3339(e.time_unix_micros),
                short(&e.exec_id),
                kind,
                detail
            );
        }
    }
    let _ = std::io::stdout().flush();
}

fn short(id: &str) -> &str {
    &id[..id.len().min(14)]
}

fn print_conversation(c: &Conversation, output: Output) {
    match output {
        Output::Json | Output::Yaml => crate::emit(output, &cadre_proto::json::conversation(c)),
        Output::Text => {
            println!("conversation:  {}", c.conversation_id);
            println!("last seq:      {}", c.last_seq);
            if !c.exec_id.is_empty() {
                println!(
                    "latest exec:   {} ({}, agent {})",
                    c.exec_id,
                    exec_state_name(c.exec_state),
                    c.agent_id
                );
            }
            if !c.waiting_call_id.is_empty() {
                println!(
                    "waiting on:    call {} ({}): `cadre approve --conversation {}`",
                    c.waiting_call_id, c.waiting_tool, c.conversation_id
                );
            }
            if !c.forked_from.is_empty() {
                println!(
                    "forked from:   {} at seq {}",
                    c.forked_from, c.forked_at_seq
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_flags;

    #[test]
    fn field_names_become_the_commands_flags() {
        assert_eq!(
            in_flags(
                "Exec",
                "after_seq 9 is beyond the end; reconnect with last_seq"
            ),
            "--last-seq 9 is beyond the end; reconnect with --last-seq"
        );
        assert_eq!(
            in_flags(
                "Fork",
                "dest_conversation_id: bad; src_conversation_id: `a_conversation_id`"
            ),
            "--to: bad; --conversation: `a_conversation_id`"
        );
        assert_eq!(in_flags("Exec", "agent_id: missing"), "--agent: missing");
        assert_eq!(in_flags("Exec", "inputs and input_x"), "inputs and input_x");
    }
}
