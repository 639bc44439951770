//! Packet capture on a node's link (tcpdump), and just enough of the pcap format to check what
//! crossed it: TCP segments over IPv4 over Ethernet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use crate::bed::TestBed;

/// One captured TCP segment.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Sender.
    pub src: SocketAddrV4,
    /// Receiver.
    pub dst: SocketAddrV4,
    /// TCP payload (may be empty).
    pub payload: Vec<u8>,
}

/// Reads every IPv4/TCP segment of a pcap file.
pub fn tcp_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    ensure!(bytes.len() >= 24, "pcap file too short");
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => bail!("not a pcap file (magic {other:#x})"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let raw = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        }
    };
    ensure!(u32_at(bytes, 20) == 1, "only Ethernet captures are read");
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_at(bytes, at + 8) as usize;
        let start = at + 16;
        let end = (start + len).min(bytes.len());
        if let Some(segment) = parse_frame(&bytes[start..end]) {
            segments.push(segment);
        }
        at = start + len;
    }
    Ok(segments)
}

fn parse_frame(frame: &[u8]) -> Option<Segment> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = ip.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let offset = usize::from(tcp[12] >> 4) * 4;
    let addr = |o: usize, p: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]),
            u16::from_be_bytes([tcp[p], tcp[p + 1]]),
        )
    };
    Some(Segment {
        src: addr(12, 0),
        dst: addr(16, 2),
        payload: tcp.get(offset..).unwrap_or_default().to_vec(),
    })
}

impl TestBed {
    /// Starts a packet capture on node `i`'s fabric link, written to `file` in the bed's dir.
    pub fn capture(&mut self, i: usize, file: &str) -> Result<PathBuf> {
        let path = self.dir.join(file);
        let netns = self.nodes[i].netns.clone();
        let path_str = path.display().to_string();
        self.spawn_in(
            &netns,
            &[
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-s",
                "0",
                "-w",
                &path_str,
                "tcp",
            ],
            &format!("{file}.log"),
        )?;
        // tcpdump says "listening on" once the capture is armed.
        let log = self.dir.join(format!("{file}.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            ensure!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(path)
    }
}
