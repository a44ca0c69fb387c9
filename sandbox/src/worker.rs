//! The worker: `cadre worker` serves `cadre.v1.Worker` inside a sandbox, and the node connects
//! to it over the sandbox's stdio (one HTTP/2 connection on a pipe pair).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::worker_server::{Worker, WorkerServer};
use cadre_proto::v1::{
    ActivateRequest, ActivateResponse, ActivationError, ActivationResult, ActorActivation,
    DeliverRequest, DeliverResponse, FileEntry, ListFilesRequest, ListFilesResponse,
    PassivateRequest, PassivateResponse, ProcessExit, ProcessStart, ReadFileRequest,
    ReadFileResponse, RunInput, RunOutput, SuspendRequest, SuspendResponse, WorkerStats,
    WorkerStatsRequest, WriteFileRequest, WriteFileResponse, activation_result, run_input,
    run_output,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

/// Serves the worker protocol for files under `workspace`.
pub struct WorkerService {
    workspace: PathBuf,
    /// The size of the workspace's filesystem, when it is bounded: errors name it.
    workspace_quota: Option<u64>,
    /// Where hosted actors' workspaces go.
    actors_dir: PathBuf,
    processes: Arc<AtomicU32>,
    /// Hosted logical actors by id.
    actors: Mutex<HashMap<String, HostedActor>>,
    started: Instant,
    /// Bumped by Suspend: the current connection ends.
    suspend: tokio::sync::watch::Sender<u64>,
}

/// A logical actor active in this worker. Its state is the number of messages it has handled,
/// carried across passivations (8 bytes, little-endian).
struct HostedActor {
    handled: u64,
}

/// Bytes per stdout/stderr message.
const CHUNK: usize = 32 * 1024;

/// The line that starts each connection on the worker's stdin.
pub const CONNECT_LINE: &[u8] = b"cadre-worker-connect\n";

/// How long a suspended connection may take to deliver the Suspend answer (a write of a few
/// bytes into a pipe the node reads).
const SUSPEND_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

impl WorkerService {
    /// Serves `workspace`; hosted actors get their workspaces under `actors_dir` (in a
    /// sandbox, a tmpfs of its own: scratch space that goes with the actor).
    pub fn new(workspace: PathBuf, actors_dir: PathBuf) -> Self {
        Self {
            workspace,
            workspace_quota: None,
            actors_dir,
            processes: Arc::default(),
            actors: Mutex::default(),
            started: Instant::now(),
            suspend: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Says that the workspace is a filesystem of `quota` bytes (`--workspace-quota`), so that
    /// a write that fills it fails naming the quota.
    pub fn with_workspace_quota(mut self, quota: Option<u64>) -> Self {
        self.workspace_quota = quota;
        self
    }

    /// The error of a failed file operation on `path` (`workspace quota 1 GiB exceeded` when
    /// the workspace is full).
    fn io_status(&self, path: &str, e: std::io::Error) -> Status {
        match (e.raw_os_error(), self.workspace_quota) {
            (Some(libc::ENOSPC), Some(quota)) => Status::resource_exhausted(format!(
                "{}: cannot write {path}",
                quota_exceeded(quota)
            )),
            _ => io_status(path, e),
        }
    }

    /// The limit a failed process ran into: the workspace's quota if the workspace is full.
    fn limit_hit(workspace: &Path, quota: Option<u64>) -> String {
        const NEARLY_FULL: u64 = 1 << 20;
        match quota {
            Some(quota)
                if crate::workspace::free_bytes(workspace).is_ok_and(|free| free < NEARLY_FULL) =>
            {
                quota_exceeded(quota)
            }
            _ => String::new(),
        }
    }

    /// Serves connections on stdin and stdout, one after another, until stdin ends. Blocks
    /// the calling thread; each connection gets a single-threaded runtime of its own.
    ///
    /// Why it is built this way: after a gVisor restore, the stdio are new host files behind
    /// the same descriptors, and this runsc version delivers readiness events neither for them
    /// nor reliably through an epoll set made before the checkpoint. So the first connection
    /// reads stdin through its runtime's epoll set (one wakeup per request: under gVisor a
    /// thread handing each read to another costs as much again), and once it has ended (the
    /// sandbox may be checkpointed next) stdin is read by a thread of its own with plain
    /// blocking reads. Stdout is written with blocking writes, and the runtime (with its epoll
    /// set) of an ended connection is dropped: the next connection starts on a new one.
    /// Dropping it also ends whatever that connection left running (its Run calls), so
    /// nothing of it can write into the next connection.
    pub fn serve_stdio(self) -> Result<(), std::io::Error> {
        use std::os::fd::AsFd;
        let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        let input = Arc::new(Mutex::new(Input {
            pending: Vec::new(),
            source: Source::Direct(stdin),
        }));
        let stdout = Arc::new(stdout);
        let service = Arc::new(self);
        while read_connect_line(&input) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve_connection(
                service.clone(),
                input.clone(),
                stdout.clone(),
            ))?;
            drop(runtime);
            input.lock().expect("input").read_by_thread()?;
        }
        Ok(())
    }

    /// Serves the worker protocol on the connections `incoming` yields: a worker reached
    /// over the network (a pod), whose connections are TLS streams that authenticated the
    /// node's client certificate. Runs until the stream ends.
    pub async fn serve_incoming<IO>(
        self,
        incoming: impl Stream<Item = Result<IO, std::io::Error>> + Send + 'static,
    ) -> Result<(), tonic::transport::Error>
    where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    {
        Server::builder()
            .add_service(WorkerServer::new(self))
            .serve_with_incoming(incoming)
            .await
    }

    /// `path` inside the workspace; absolute paths and `..` are refused.
    fn resolve(&self, path: &str) -> Result<PathBuf, Status> {
        let relative = Path::new(path);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Status::invalid_argument(format!(
                "path `{path}` leaves the workspace (use a relative path without `..`)"
            )));
        }
        Ok(self.workspace.join(relative))
    }

    /// An actor's workspace; the id must be a plain name.
    fn actor_workspace(&self, actor_id: &str) -> Result<PathBuf, Status> {
        let plain = !actor_id.is_empty()
            && actor_id != "."
            && actor_id != ".."
            && actor_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !plain {
            return Err(Status::invalid_argument(format!(
                "actor_id `{actor_id}`: use letters, digits, `.`, `-` and `_`"
            )));
        }
        Ok(self.actors_dir.join(actor_id))
    }

    /// Makes an actor's workspace and loads its state: the workspace.
    fn activate_one(&self, actor: ActorActivation) -> Result<String, Status> {
        let workspace = self.actor_workspace(&actor.actor_id)?;
        let handled = match actor.state.len() {
            0 => 0,
            8 => u64::from_le_bytes(actor.state[..].try_into().expect("8 bytes")),
            n => {
                return Err(Status::invalid_argument(format!(
                    "state of actor `{}`: {n} bytes, expected 0 or 8",
                    actor.actor_id
                )));
            }
        };
        let already =
            || Status::already_exists(format!("actor `{}` is already active here", actor.actor_id));
        if self
            .actors
            .lock()
            .expect("actors")
            .contains_key(&actor.actor_id)
        {
            return Err(already());
        }
        // A short metadata call: done on this thread rather than handed to another.
        let shown = workspace.display().to_string();
        std::fs::create_dir_all(&workspace).map_err(|e| io_status(&shown, e))?;
        let mut actors = self.actors.lock().expect("actors");
        if actors.contains_key(&actor.actor_id) {
            return Err(already());
        }
        actors.insert(actor.actor_id, HostedActor { handled });
        Ok(shown)
    }

    fn start(&self, start: ProcessStart) -> Result<tokio::process::Child, Status> {
        let Some(program) = start.argv.first() else {
            return Err(Status::invalid_argument("start.argv is empty"));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(&start.argv[1..])
            .envs(&start.env)
            .current_dir(self.resolve(&start.cwd)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command.spawn().map_err(|e| {
            Status::invalid_argument(format!("start.argv: cannot run `{program}`: {e}"))
        })
    }
}

type RunStream = Pin<Box<dyn Stream<Item = Result<RunOutput, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type RunStream = RunStream;

    async fn run(
        &self,
        request: Request<Streaming<RunInput>>,
    ) -> Result<Response<RunStream>, Status> {
        let mut inputs = request.into_inner();
        let Some(run_input::Input::Start(start)) =
            inputs.message().await?.and_then(|first| first.input)
        else {
            return Err(Status::invalid_argument("the first input must be `start`"));
        };
        let mut child = self.start(start)?;
        let pid = child.id().unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        let output = |o| Ok(RunOutput { output: Some(o) });
        let _ = tx.send(output(run_output::Output::Pid(pid))).await;
        let stdout = forward(child.stdout.take(), tx.clone(), run_output::Output::Stdout);
        let stderr = forward(child.stderr.take(), tx.clone(), run_output::Output::Stderr);
        let mut stdin = child.stdin.take();
        let signal = move |n: i32| {
            // SAFETY: a plain syscall; the negative pid names the process group it leads.
            unsafe { libc::kill(-(pid as i32), n) };
        };
        tokio::spawn(async move {
            while let Ok(Some(input)) = inputs.message().await {
                match input.input {
                    Some(run_input::Input::Stdin(bytes)) => {
                        if let Some(pipe) = &mut stdin
                            && pipe.write_all(&bytes).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    Some(run_input::Input::CloseStdin(_)) => stdin = None,
                    Some(run_input::Input::Signal(n)) => signal(n),
                    Some(run_input::Input::Start(_)) | None => {}
                }
            }
        });
        let processes = self.processes.clone();
        processes.fetch_add(1, Ordering::SeqCst);
        let (workspace, quota) = (self.workspace.clone(), self.workspace_quota);
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // The caller went away: the process goes too.
                () = tx.closed() => {
                    signal(libc::SIGKILL);
                    child.wait().await
                }
            };
            let _ = tokio::join!(stdout, stderr);
            processes.fetch_sub(1, Ordering::SeqCst);
            let exit = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    ProcessExit {
                        code: status.code().unwrap_or(-1),
                        signal: status.signal().unwrap_or(0),
                        limit: match status.success() {
                            true => String::new(),
                            false => Self::limit_hit(&workspace, quota),
                        },
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("cannot wait for {pid}: {e}"))))
                        .await;
                    return;
                }
            };
            let _ = tx.send(output(run_output::Output::Exit(exit))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write_file(
        &self,
        request: Request<WriteFileRequest>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let r = request.into_inner();
        let path = self.resolve(&r.path)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| self.io_status(&r.path, e))?;
        }
        tokio::fs::write(&path, &r.content)
            .await
            .map_err(|e| self.io_status(&r.path, e))?;
        Ok(Response::new(WriteFileResponse {}))
    }

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReadFileResponse>, Status> {
        let r = request.into_inner();
        let content = tokio::fs::read(self.resolve(&r.path)?)
            .await
            .map_err(|e| self.io_status(&r.path, e))?;
        Ok(Response::new(ReadFileResponse { content }))
    }

    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        let r = request.into_inner();
        let mut dir = tokio::fs::read_dir(self.resolve(&r.path)?)
            .await
            .map_err(|e| self.io_status(&r.path, e))?;
        let mut entries = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(|e| io_status(&r.path, e))? {
            let meta = entry
                .metadata()
                .await
                .map_err(|e| self.io_status(&r.path, e))?;
            entries.push(FileEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                dir: meta.is_dir(),
                size: meta.len(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListFilesResponse { entries }))
    }

    async fn stats(
        &self,
        _request: Request<WorkerStatsRequest>,
    ) -> Result<Response<WorkerStats>, Status> {
        Ok(Response::new(WorkerStats {
            processes: self.processes.load(Ordering::SeqCst),
            actors: self.actors.lock().expect("actors").len() as u32,
            memory_used_bytes: memory_used().unwrap_or(0),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }))
    }

    async fn activate(
        &self,
        request: Request<ActivateRequest>,
    ) -> Result<Response<ActivateResponse>, Status> {
        let results = request
            .into_inner()
            .actors
            .into_iter()
            .map(|actor| {
                let result = match self.activate_one(actor) {
                    Ok(workspace) => activation_result::Result::Workspace(workspace),
                    Err(status) => activation_result::Result::Error(ActivationError {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }),
                };
                ActivationResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(ActivateResponse { results }))
    }

    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let r = request.into_inner();
        let mut actors = self.actors.lock().expect("actors");
        let actor = actors
            .get_mut(&r.actor_id)
            .ok_or_else(|| not_active(&r.actor_id))?;
        actor.handled += 1;
        Ok(Response::new(DeliverResponse {
            payload: r.payload,
            handled: actor.handled,
        }))
    }

    async fn suspend(
        &self,
        _request: Request<SuspendRequest>,
    ) -> Result<Response<SuspendResponse>, Status> {
        self.suspend.send_modify(|n| *n += 1);
        Ok(Response::new(SuspendResponse {}))
    }

    async fn passivate(
        &self,
        request: Request<PassivateRequest>,
    ) -> Result<Response<PassivateResponse>, Status> {
        let r = request.into_inner();
        if r.keep_active {
            let actors = self.actors.lock().expect("actors");
            let actor = actors
                .get(&r.actor_id)
                .ok_or_else(|| not_active(&r.actor_id))?;
            return Ok(Response::new(PassivateResponse {
                state: actor.handled.to_le_bytes().to_vec(),
            }));
        }
        let workspace = self.actor_workspace(&r.actor_id)?;
        let actor = self
            .actors
            .lock()
            .expect("actors")
            .remove(&r.actor_id)
            .ok_or_else(|| not_active(&r.actor_id))?;
        match std::fs::remove_dir_all(&workspace) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_status(&workspace.display().to_string(), e));
            }
            _ => {}
        }
        Ok(Response::new(PassivateResponse {
            state: actor.handled.to_le_bytes().to_vec(),
        }))
    }
}

/// Stdin, and what the current connection has not taken yet.
struct Input {
    pending: Vec<u8>,
    source: Source,
}

enum Source {
    /// Read by the connection's runtime, with readiness from its epoll set.
    Direct(std::fs::File),
    /// Chunks read by a thread of its own with blocking reads; an empty chunk is the end.
    Thread(mpsc::Receiver<Vec<u8>>),
}

impl Input {
    /// From now on stdin is read by a thread of its own (a no-op if it already is).
    fn read_by_thread(&mut self) -> std::io::Result<()> {
        use std::io::Read;
        let Source::Direct(stdin) = &self.source else {
            return Ok(());
        };
        let mut stdin = stdin.try_clone()?;
        set_nonblocking(&stdin, false)?;
        let (tx, chunks) = mpsc::channel(8);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => 0,
                    };
                    if tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                        return;
                    }
                }
            })?;
        self.source = Source::Thread(chunks);
        Ok(())
    }

    /// The next chunk of stdin, waiting for it; None at the end.
    fn next_blocking(&mut self) -> Option<Vec<u8>> {
        use std::io::Read;
        match &mut self.source {
            Source::Direct(stdin) => {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) => return None,
                        Ok(n) => {
                            buf.truncate(n);
                            return Some(buf);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return None,
                    }
                }
            }
            Source::Thread(chunks) => chunks.blocking_recv().filter(|c| !c.is_empty()),
        }
    }
}

fn set_nonblocking(file: &std::fs::File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this file owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Serves one connection until it ends or is suspended.
async fn serve_connection(
    service: Arc<WorkerService>,
    input: Arc<Mutex<Input>>,
    stdout: Arc<std::fs::File>,
) -> Result<(), std::io::Error> {
    let mut suspended = service.suspend.subscribe();
    suspended.borrow_and_update();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let direct = match &input.lock().expect("input").source {
        Source::Direct(stdin) => {
            let stdin = stdin.try_clone()?;
            set_nonblocking(&stdin, true)?;
            // SAFETY: the AsyncFd owns the File, which keeps its descriptor open and the same.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    stdin,
                    tokio::io::Interest::READABLE,
                )
            };
            Some(registered?)
        }
        Source::Thread(_) => None,
    };
    let io = Pipe {
        input,
        direct,
        stdout,
        generation: *suspended.borrow(),
        suspend: suspended.clone(),
        _closed: closed_tx,
    };
    // The server stops when its incoming stream ends, so it never does; it stops instead when
    // the one connection is gone (hyper drops the pipe), or is dropped on Suspend.
    let incoming = tokio_stream::StreamExt::chain(
        tokio_stream::once(Ok::<_, std::io::Error>(io)),
        tokio_stream::pending(),
    );
    let server = Server::builder()
        .add_service(WorkerServer::from_arc(service))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = closed.await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served.map_err(std::io::Error::other),
        _ = suspended.changed() => {
            // Let the Suspend answer go out; then the connection's runtime is dropped.
            let _ = tokio::time::timeout(SUSPEND_GRACE, &mut server).await;
            Ok(())
        }
    }
}

/// Reads stdin up to and including the next connect line, dropping what comes before it
/// (what is left of a suspended connection). False at the end of stdin. Blocks.
fn read_connect_line(input: &Mutex<Input>) -> bool {
    let mut input = input.lock().expect("input");
    loop {
        if let Some(at) = input
            .pending
            .windows(CONNECT_LINE.len())
            .position(|w| w == CONNECT_LINE)
        {
            input.pending.drain(..at + CONNECT_LINE.len());
            return true;
        }
        // Keep what could be the start of a connect line split between chunks.
        let keep = input.pending.len().min(CONNECT_LINE.len() - 1);
        let cut = input.pending.len() - keep;
        input.pending.drain(..cut);
        match input.next_blocking() {
            Some(chunk) => input.pending.extend_from_slice(&chunk),
            None => return false,
        }
    }
}

fn not_active(actor_id: &str) -> Status {
    Status::failed_precondition(format!("actor `{actor_id}` is not active in this worker"))
}

/// Connects to a worker over a byte stream (e.g. a sandbox's stdout and stdin, joined):
/// the connect line, then HTTP/2.
pub async fn connect<Io>(mut io: Io) -> Result<WorkerClient<Channel>, std::io::Error>
where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    io.write_all(CONNECT_LINE).await?;
    // The stream can be handed out once; a reconnect finds it gone and fails.
    let slot = Arc::new(Mutex::new(Some(io)));
    let channel = Endpoint::from_static("http://worker.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = slot.lock().expect("worker io").take();
            async move {
                io.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the worker's connection is closed"))
            }
        }))
        .await
        .map_err(std::io::Error::other)?;
    Ok(WorkerClient::new(channel))
}

/// Connects to the worker on a child's stdout and stdin (both piped). Also returns a
/// duplicate of the child's stdin: closing the connection (as Suspend does) then does not end
/// the worker's input, which would end the worker.
pub async fn connect_child(
    child: &mut tokio::process::Child,
) -> Result<(WorkerClient<Channel>, std::os::fd::OwnedFd), std::io::Error> {
    use std::os::fd::AsFd;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(std::io::Error::other(
            "the worker's stdin and stdout are not piped",
        ));
    };
    let input = stdin.as_fd().try_clone_to_owned()?;
    let client = connect(tokio::io::join(stdout, stdin)).await?;
    Ok((client, input))
}

/// The name a worker's certificate is for, whatever address it is reached at: workers are
/// reached by address (a pod's IP), which no certificate made ahead of the pod can name.
pub const WORKER_TLS_NAME: &str = "cadre-worker";

/// Connects to a worker over TCP with mutual TLS: `url` is `https://HOST:PORT`, the worker's
/// certificate must chain to `ca_pem` and be for [`WORKER_TLS_NAME`], and the node presents
/// `cert_pem` with its `key_pem`.
pub async fn connect_tls(
    url: &str,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<WorkerClient<Channel>, tonic::transport::Error> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name(WORKER_TLS_NAME)
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    let channel = Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(WorkerClient::new(channel))
}

/// Copies a pipe into output messages.
fn forward(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    tx: mpsc::Sender<Result<RunOutput, Status>>,
    wrap: fn(Vec<u8>) -> run_output::Output,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return };
        let mut buf = vec![0; CHUNK];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                return;
            }
            let message = RunOutput {
                output: Some(wrap(buf[..n].to_vec())),
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
    })
}

fn io_status(path: &str, e: std::io::Error) -> Status {
    let message = format!("`{path}`: {e}");
    match e.kind() {
        std::io::ErrorKind::NotFound => Status::not_found(message),
        std::io::ErrorKind::PermissionDenied => Status::permission_denied(message),
        _ => Status::internal(message),
    }
}

/// MemTotal - MemAvailable from /proc/meminfo, in bytes.
fn memory_used() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

/// Stdin and stdout as one connection; dropping it signals the server to stop. Both are
/// shared so that the next connection can use them.
struct Pipe {
    input: Arc<Mutex<Input>>,
    /// Stdin (non-blocking) in this connection's epoll set, if it is read directly.
    direct: Option<tokio::io::unix::AsyncFd<std::fs::File>>,
    stdout: Arc<std::fs::File>,
    /// The Suspend generation this connection was made in: once it changes, the connection
    /// reads nothing more (its reads never complete; it still writes, so the Suspend answer
    /// goes out), and the rest of stdin, the next connection after a restore included, is
    /// left for the next connection.
    generation: u64,
    suspend: tokio::sync::watch::Receiver<u64>,
    _closed: tokio::sync::oneshot::Sender<()>,
}

impl Connected for Pipe {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if *self.suspend.borrow() != self.generation {
            // Suspended: nothing more is read until this connection's runtime is dropped.
            return Poll::Pending;
        }
        let mut input = self.input.lock().expect("input");
        if input.pending.is_empty() {
            if let Some(stdin) = &self.direct {
                use std::io::Read;
                loop {
                    let mut ready = std::task::ready!(stdin.poll_read_ready(cx))?;
                    let wanted = buf.remaining();
                    // Zero bytes read is the end of stdin: the end of this connection.
                    if let Ok(read) =
                        ready.try_io(|stdin| stdin.get_ref().read(buf.initialize_unfilled()))
                    {
                        let read = read?;
                        // A pipe read short of what was asked has emptied the pipe: wait for
                        // the next readiness event rather than read again to hear EAGAIN
                        // (what tokio's own sockets do).
                        if read > 0 && read < wanted {
                            ready.clear_ready();
                        }
                        buf.advance(read);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let Source::Thread(chunks) = &mut input.source else {
                unreachable!("stdin is read directly or by its thread");
            };
            match std::task::ready!(chunks.poll_recv(cx)) {
                Some(chunk) => input.pending = chunk,
                // The end of stdin: the end of this connection.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = input.pending.len().min(buf.remaining());
        buf.put_slice(&input.pending[..n]);
        input.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // A blocking write: the node always reads, so it waits only while the pipe is full.
        use std::io::Write;
        Poll::Ready((&*self.stdout).write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Stdout outlives the connection.
        Poll::Ready(Ok(()))
    }
}

/// `workspace quota 1 GiB exceeded`.
fn quota_exceeded(quota: u64) -> String {
    format!(
        "workspace quota {} exceeded",
        crate::workspace::human_bytes(quota)
    )
}
