//! Sockets inside other network namespaces.
//!
//! The node proxy serves pods from the node's namespace but opens its listeners, and the
//! outbound sockets it connects on behalf of a pod, *inside* the pod's network namespace (the
//! in-pod model of ztunnel). A socket stays in the namespace it was created in, so only the
//! `socket()` call has to happen there. Each [`Netns`] owns one thread that has entered the
//! namespace, for listeners and other rare work. The sockets of new connections, made on the
//! hot path, are created on the calling thread instead: it enters the pod's namespace, creates
//! the socket and returns to the node's before anything else runs on it (a thread that cannot
//! return aborts the process rather than serve from the wrong namespace).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a network namespace, with a thread inside it that creates sockets.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    /// The namespace, entered by the calling thread to create a socket.
    file: std::fs::File,
}

/// The node proxy's own network namespace (the main thread never leaves it).
fn home() -> io::Result<&'static std::fs::File> {
    static HOME: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(file) = HOME.get() {
        return Ok(file);
    }
    let file = std::fs::File::open("/proc/self/ns/net")?;
    Ok(HOME.get_or_init(|| file))
}

/// Runs `f` on the calling thread inside the namespace `file`, then returns the thread to the
/// node's. Only for short synchronous work (creating a socket): nothing else runs meanwhile.
fn inside<T>(file: &std::fs::File, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    struct Back(&'static std::fs::File);
    impl Drop for Back {
        fn drop(&mut self) {
            if nix::sched::setns(self.0, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                // Serving from a pod's namespace would be worse than stopping.
                std::process::abort();
            }
        }
    }
    let home = home()?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let _back = Back(home);
    f()
}

/// Options for a listening socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenOpts {
    /// `IP_TRANSPARENT`: accept connections redirected by TPROXY to addresses that are not local.
    pub transparent: bool,
    /// `SO_MARK` on the listener (inherited by accepted sockets).
    pub mark: Option<u32>,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`) and
    /// starts its socket thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| annotate(path, "open", &e))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = format!(
            "netns-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        let thread_file = file.try_clone()?;
        std::thread::Builder::new().name(name).spawn(move || {
            let entered = nix::sched::setns(&thread_file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from);
            drop(thread_file);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                // Runs until every sender (the Netns) is dropped.
                for job in rx {
                    job();
                }
            }
        })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread exited"))?
            .map_err(|e| annotate(path, "setns", &e))?;
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
            file,
        })
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the thread inside the namespace.
    pub fn run<T, F>(&self, f: F) -> impl Future<Output = io::Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .is_ok();
        async move {
            if !sent {
                return Err(io::Error::other("netns thread is gone"));
            }
            rx.await
                .map_err(|_| io::Error::other("netns thread dropped the job"))
        }
    }

    /// Opens a TCP listener on `addr` inside the namespace.
    pub async fn listen(
        &self,
        addr: SocketAddr,
        opts: ListenOpts,
    ) -> io::Result<tokio::net::TcpListener> {
        let socket = self.run(move || listen_socket(addr, opts)).await??;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// Creates an unconnected TCP socket inside the namespace, marked with `mark` so the
    /// namespace's capture rules let it through.
    pub async fn tcp_socket(&self, mark: Option<u32>) -> io::Result<tokio::net::TcpSocket> {
        let socket = inside(&self.file, || {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    }

    /// Binds a UDP socket to `addr` inside the namespace, marked with `mark`.
    pub async fn udp_bind(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::UdpSocket> {
        let socket = self
            .run(move || -> io::Result<Socket> {
                let socket =
                    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
                if let Some(mark) = mark {
                    socket.set_mark(mark)?;
                }
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                Ok(socket)
            })
            .await??;
        tokio::net::UdpSocket::from_std(socket.into())
    }

    /// Connects to `addr` from inside the namespace.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::TcpStream> {
        let socket = self.tcp_socket(mark).await?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// How long a connection opened inside a namespace may take to be established.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a TCP listener in the current namespace.
pub fn listen_socket(addr: SocketAddr, opts: ListenOpts) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if opts.transparent {
        socket.set_ip_transparent_v4(true)?;
    }
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

fn annotate(path: &Path, what: &str, e: &io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what} network namespace {}: {e}", path.display()),
    )
}
