//! Weft's eBPF capture: the programs in `bpf/capture.bpf.c` (compiled by clang in the build
//! script) and their loader.
//!
//! [`Capture::load`] loads the object, reusing the maps pinned under the node's pin directory by
//! an earlier run, and attaches the socket programs (connect4/6, getpeername4, sockops) to a cgroup
//! v2 directory. Every link is pinned, so the programs stay attached while the proxy is down
//! (captured traffic then finds no listener and fails closed) and a restarted proxy replaces them
//! without a gap: new links are attached before the old pins are removed.
//!
//! A pod is enrolled by its network namespace cookie (the kernel's, which the pod cannot forge or
//! reuse) and its IP; [`Capture::attach_pod_interfaces`] attaches the inbound tc program to every
//! interface inside the pod's namespace, whatever the CNI named them.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, SockOps, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};

/// The compiled capture programs.
pub static CAPTURE_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// `SO_MARK` bit the programs treat as "the proxy's own socket": never captured.
pub const PROXY_MARK: u32 = 0x200;

/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const TC_PROGRAM: &str = "weft_tc_ingress";
const SOCKET_PROGRAMS: [&str; 6] = [
    "weft_connect4",
    "weft_connect6",
    "weft_getpeername4",
    "weft_sendmsg4",
    "weft_recvmsg4",
    "weft_sockops",
];

/// Why capture could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "loading the eBPF object: {0} (needs root, a kernel with BTF-capable bpf and cgroup v2)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning under {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn pin_err(path: &Path) -> impl FnOnce(aya::pin::PinError) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Pin {
        path,
        source: io::Error::other(e),
    }
}

/// Value of `weft_inbound`: see `struct pod_inbound` in the C source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PodInbound {
    probe_src: u32,
    flags: u32,
}

/// Key of `weft_orig_dst`: see `struct client_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClientKey {
    netns: u64,
    ip: u32,
    port: u32,
}

/// Value of `weft_orig_dst`: see `struct orig_dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OrigDst {
    ip: u32,
    port: u32,
}

// SAFETY: plain `#[repr(C)]` structs of integers without padding, matching the C layouts.
unsafe impl aya::Pod for PodInbound {}
// SAFETY: as above (u64 then two u32: 16 bytes, no padding).
unsafe impl aya::Pod for ClientKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OrigDst {}

/// A pod's freshly attached tc links, not yet pinned (dropping them detaches them).
#[derive(Debug)]
pub struct PodLinks(Vec<(String, FdLink)>);

/// The loaded capture programs of one node proxy.
pub struct Capture {
    pin_dir: PathBuf,
    // Kept so that the loaded programs outlive the links made from their pins.
    _ebpf: Ebpf,
    enrolled: Mutex<HashMap<MapData, u64, u32>>,
    inbound: Mutex<HashMap<MapData, u32, PodInbound>>,
    orig_dst: HashMap<MapData, ClientKey, OrigDst>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Loads the programs, reusing the maps pinned in `pin_dir`, and attaches the socket
    /// programs to the cgroup v2 directory `cgroup` (replacing the links of an earlier run).
    pub fn load(pin_dir: &Path, cgroup: &Path) -> Result<Self, Error> {
        ensure_bpffs(Path::new(BPFFS))?;
        std::fs::create_dir_all(pin_dir.join("pods"))
            .map_err(io_err(format!("creating {}", pin_dir.display())))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(CAPTURE_OBJECT)?;
        let cgroup_dir = std::fs::File::open(cgroup)
            .map_err(io_err(format!("opening cgroup {}", cgroup.display())))?;

        for name in SOCKET_PROGRAMS {
            let program = ebpf.program_mut(name).ok_or_else(|| Error::Io {
                what: format!("program {name} missing from the object"),
                source: io::ErrorKind::NotFound.into(),
            })?;
            let link: FdLink = match program {
                aya::programs::Program::CgroupSockAddr(p) => {
                    attach_sock_addr(name, p, cgroup_dir.as_fd())?
                }
                aya::programs::Program::SockOps(p) => attach_sock_ops(name, p, cgroup_dir.as_fd())?,
                _ => unreachable_program(name)?,
            };
            replace_pin(link, &pin_dir.join(format!("link_{name}")))?;
        }

        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::Program {
                name: TC_PROGRAM,
                source: ProgramError::NotLoaded,
            })?;
        tc.load().map_err(|source| Error::Program {
            name: TC_PROGRAM,
            source,
        })?;
        let tc_pin = pin_dir.join("prog_tc_ingress");
        remove_pin(&tc_pin)?;
        tc.pin(&tc_pin).map_err(pin_err(&tc_pin))?;

        let enrolled = take_map(&mut ebpf, "weft_enrolled")?;
        let inbound = take_map(&mut ebpf, "weft_inbound")?;
        let orig_dst = take_map(&mut ebpf, "weft_orig_dst")?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            _ebpf: ebpf,
            enrolled: Mutex::new(enrolled),
            inbound: Mutex::new(inbound),
            orig_dst,
        })
    }

    /// The directory holding this proxy's pinned maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Starts capturing the pod with network namespace cookie `netns` and IP `ip`. `probe_src`
    /// is the node address whose plaintext (kubelet health probes) reaches the app directly.
    /// Call [`Capture::attach_pod_interfaces`] from inside the pod's namespace as well.
    pub fn enroll(
        &self,
        netns: u64,
        ip: Ipv4Addr,
        probe_src: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let value = PodInbound {
            probe_src: probe_src.map_or(0, ipv4_be),
            flags: 0,
        };
        lock(&self.inbound)
            .insert(ipv4_be(ip), value, 0)
            .map_err(|source| Error::Map {
                name: "weft_inbound",
                source,
            })?;
        lock(&self.enrolled)
            .insert(netns, ipv4_be(ip), 0)
            .map_err(|source| Error::Map {
                name: "weft_enrolled",
                source,
            })
    }

    /// Attaches the inbound program to every interface of the current thread's network
    /// namespace other than loopback. Must run on a thread inside the pod's namespace; hand the
    /// result to [`Capture::pin_pod_links`], or the links detach when dropped.
    pub fn attach_pod_interfaces(&self) -> Result<PodLinks, Error> {
        let mut program =
            SchedClassifier::from_pin(self.pin_dir.join("prog_tc_ingress")).map_err(|source| {
                Error::Program {
                    name: TC_PROGRAM,
                    source,
                }
            })?;
        let interfaces = nix::net::if_::if_nameindex()
            .map_err(|e| io_err("listing the pod's interfaces")(e.into()))?;
        let mut links = Vec::new();
        for interface in interfaces.iter() {
            let name = interface.name().to_string_lossy().into_owned();
            if name == "lo" {
                continue;
            }
            let prog_err = |source| Error::Program {
                name: TC_PROGRAM,
                source,
            };
            let id = program
                .attach(&name, TcAttachType::Ingress)
                .map_err(prog_err)?;
            let link = program.take_link(id).map_err(prog_err)?;
            let link = FdLink::try_from(link).map_err(|source| Error::Link {
                name: TC_PROGRAM,
                source,
            })?;
            links.push((name, link));
        }
        Ok(PodLinks(links))
    }

    /// Pins a pod's tc links as `pods/<ip>_<netns>_<ifname>` (the IP with dashes: bpffs refuses
    /// dots in names), replacing those of an earlier run; returns the interface names.
    pub fn pin_pod_links(
        &self,
        netns: u64,
        ip: Ipv4Addr,
        links: PodLinks,
    ) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for (name, link) in links.0 {
            replace_pin(
                link,
                &self
                    .pod_pin_dir()
                    .join(format!("{}_{netns}_{name}", pin_ip(ip))),
            )?;
            names.push(name);
        }
        Ok(names)
    }

    /// Stops capturing the pod: removes it from the maps and detaches its tc links.
    pub fn release(&self, netns: u64, ip: Ipv4Addr) -> Result<(), Error> {
        let _ = lock(&self.enrolled).remove(&netns);
        let _ = lock(&self.inbound).remove(&ipv4_be(ip));
        self.remove_pod_links(|name| name.starts_with(&format!("{}_", pin_ip(ip))))
    }

    /// Removes every map entry and tc link of pods whose IP is not in `keep` (pods deleted
    /// while the proxy was down, or no longer enrolled).
    pub fn sweep(&self, keep: &BTreeSet<Ipv4Addr>) -> Result<usize, Error> {
        let keep_be: BTreeSet<u32> = keep.iter().copied().map(ipv4_be).collect();
        let mut removed = 0;
        {
            let mut enrolled = lock(&self.enrolled);
            let stale: Vec<u64> = enrolled
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, ip)| !keep_be.contains(ip))
                .map(|(netns, _)| netns)
                .collect();
            for netns in stale {
                let _ = enrolled.remove(&netns);
                removed += 1;
            }
        }
        {
            let mut inbound = lock(&self.inbound);
            let stale: Vec<u32> = inbound
                .keys()
                .filter_map(Result::ok)
                .filter(|ip| !keep_be.contains(ip))
                .collect();
            for ip in stale {
                let _ = inbound.remove(&ip);
            }
        }
        self.remove_pod_links(|name| {
            name.split('_')
                .next()
                .and_then(|ip| ip.replace('-', ".").parse::<Ipv4Addr>().ok())
                .is_none_or(|ip| !keep.contains(&ip))
        })?;
        Ok(removed)
    }

    /// The original destination of a connection accepted on a pod's outbound listener, from the
    /// client address the listener saw and the pod's netns cookie.
    pub fn original_dst(&self, netns: u64, client: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = ClientKey {
            netns,
            ip: ipv4_be(*client.ip()),
            port: u32::from(client.port()),
        };
        let dst = self.orig_dst.get(&key, 0).ok()?;
        let port = u16::try_from(dst.port).ok()?;
        Some(SocketAddrV4::new(
            Ipv4Addr::from(dst.ip.to_ne_bytes()),
            port,
        ))
    }

    /// Number of enrolled network namespaces in the kernel map.
    pub fn enrolled_count(&self) -> usize {
        lock(&self.enrolled).keys().filter_map(Result::ok).count()
    }

    fn pod_pin_dir(&self) -> PathBuf {
        self.pin_dir.join("pods")
    }

    fn remove_pod_links(&self, remove: impl Fn(&str) -> bool) -> Result<(), Error> {
        let dir = self.pod_pin_dir();
        let entries =
            std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if remove(&name) {
                remove_pin(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Removes everything a proxy pinned under `pin_dir`: its links detach, its maps go. Used when
/// a node is decommissioned (and by the test bed).
pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The network namespace cookie of `socket` (`SO_NETNS_COOKIE`).
pub fn netns_cookie(socket: impl AsFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket.as_fd()),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The cgroup v2 mount point (the root of the unified hierarchy).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading /proc/self/mountinfo"))?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(Error::NoCgroup2)
}

/// Mounts bpffs at `dir` unless one is already there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    let stat = nix::sys::statfs::statfs(dir)
        .map_err(|e| io_err(format!("statfs {}", dir.display()))(e.into()))?;
    if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpffs"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| io_err(format!("mounting bpffs at {}", dir.display()))(e.into()))
}

fn attach_sock_addr(
    name: &'static str,
    program: &mut CgroupSockAddr,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> Result<FdLink, Error> {
    let prog_err = |source| Error::Program { name, source };
    program.load().map_err(prog_err)?;
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(prog_err)?;
    let link = program.take_link(id).map_err(prog_err)?;
    FdLink::try_from(link).map_err(|source| Error::Link { name, source })
}

fn attach_sock_ops(
    name: &'static str,
    program: &mut SockOps,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> Result<FdLink, Error> {
    let prog_err = |source| Error::Program { name, source };
    program.load().map_err(prog_err)?;
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(prog_err)?;
    let link = program.take_link(id).map_err(prog_err)?;
    FdLink::try_from(link).map_err(|source| Error::Link { name, source })
}

fn unreachable_program(name: &'static str) -> Result<FdLink, Error> {
    Err(Error::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })
}

/// Pins `link` at `path`, first removing an older link pinned there. The new link is already
/// attached when the old one goes, so capture never has a gap.
fn replace_pin(link: FdLink, path: &Path) -> Result<PinnedLink, Error> {
    remove_pin(path)?;
    link.pin(path).map_err(pin_err(path))
}

fn remove_pin(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Pin {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let map = ebpf.take_map(name).ok_or(Error::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    HashMap::try_from(map).map_err(|source| Error::Map { name, source })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pin_ip(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// The address as the kernel stores it in a `__u32` (network byte order in memory).
fn ipv4_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}
