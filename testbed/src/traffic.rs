//! Traffic: commands and servers inside pods, unmodified clients (curl), the `weft-testsrv`
//! load client, long-lived connections.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use crate::bed::TestBed;
use crate::net::in_netns;
use crate::pod::Pod;

/// A long-lived connection started by [`TestBed::long_lived_connection`].
pub struct LongLived(std::thread::JoinHandle<std::io::Result<Output>>);

impl LongLived {
    /// Waits for the run to end; an error (with the load generator's stderr) if the connection
    /// broke, else its JSON measurement.
    pub fn finish(self) -> Result<serde_json::Value> {
        let out = self
            .0
            .join()
            .map_err(|_| anyhow!("load thread panicked"))?
            .context("running weft-bench load")?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// A minimal HTTP/1.0 GET made from inside a namespace.
pub fn http_get_in(netns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    in_netns(netns, move || -> Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })?
}

/// Polls `probe` every 200 ms until it is true (`within` at most).
pub fn wait_until(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if probe()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until something accepts TCP connections on `addr` inside the namespace.
pub fn wait_listening(netns: &Path, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = in_netns(netns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl TestBed {
    /// Runs a program inside a pod and waits for it.
    pub fn exec(&self, pod: &Pod, argv: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in pod {}", pod.name))
    }

    /// Runs a program inside a namespace of the bed (a node's, say) and waits for it.
    pub fn exec_in(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in {netns}"))
    }

    /// Starts a long-running program inside a namespace; it is killed on teardown.
    pub fn spawn_in(&mut self, netns: &str, argv: &[&str], log: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {argv:?} in {netns}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Serves `files` (name → contents) over plain HTTP on `port` in `pod`, with Python's
    /// http.server, and waits until it accepts connections.
    pub fn serve_http(&mut self, pod: &Pod, port: u16, files: &[(&str, &str)]) -> Result<()> {
        let root = self.dir.join(format!("www-{}", pod.name));
        std::fs::create_dir_all(&root)?;
        for (name, contents) in files {
            std::fs::write(root.join(name), contents)?;
        }
        let root_str = root.display().to_string();
        let port_str = port.to_string();
        self.spawn_in(
            &pod.netns.clone(),
            &[
                "python3",
                "-m",
                "http.server",
                &port_str,
                "--bind",
                "0.0.0.0",
                "--directory",
                &root_str,
            ],
            &format!("http-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// Serves `files` over HTTPS on `port` in `pod` (Python's http.server in TLS, with the
    /// certificate and key PEM files given), and waits until it accepts connections.
    pub fn serve_https(
        &mut self,
        pod: &Pod,
        port: u16,
        files: &[(&str, &str)],
        cert: &Path,
        key: &Path,
    ) -> Result<()> {
        let root = self.dir.join(format!("www-tls-{}", pod.name));
        std::fs::create_dir_all(&root)?;
        for (name, contents) in files {
            std::fs::write(root.join(name), contents)?;
        }
        let script = "import functools, http.server, ssl, sys
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(('0.0.0.0', port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
";
        let (port_str, root_str) = (port.to_string(), root.display().to_string());
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        self.spawn_in(
            &pod.netns.clone(),
            &["python3", "-c", script, &port_str, &root_str, &cert, &key],
            &format!("https-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// `curl http://<to>:8080/<path>` from `from` with a short connect timeout (a captured
    /// connection that fails closed should fail fast): (success, stdout, stderr).
    pub fn fetch(&self, from: &Pod, to: &Pod, path: &str) -> Result<(bool, String, String)> {
        let url = format!("http://{}:8080/{path}", to.ip);
        let out = self.exec(
            from,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--connect-timeout",
                "1",
                &url,
            ],
        )?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts `weft-bench load --kind pingpong` from `client` to `server:5002` (where
    /// `weft-bench serve` runs) for `secs`: one long-lived connection.
    pub fn long_lived_connection(&self, client: &Pod, server: &Pod, secs: u64) -> LongLived {
        let bench = self.bin_dir.join("weft-bench");
        let target = format!("{}:5002", server.ip);
        let netns = client.netns.clone();
        LongLived(std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(&bench)
                .args(["load", "--kind", "pingpong", "--target", &target])
                .args(["--secs", &secs.to_string()])
                .output()
        }))
    }

    /// Runs `weft-bench serve` in `pod` (sink 5001, echo 5002, accept 5003) and waits for it.
    pub fn serve_bench(&mut self, pod: &Pod) -> Result<()> {
        let bench = self.bin_dir.join("weft-bench").display().to_string();
        self.spawn_in(
            &pod.netns,
            &[&bench, "serve"],
            &format!("bench-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 5002)),
        )
    }

    /// `curl` from `pod`: returns (exit status success, stdout, stderr).
    pub fn curl(&self, pod: &Pod, url: &str) -> Result<(bool, String, String)> {
        let out = self.exec(
            pod,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--connect-timeout",
                "3",
                url,
            ],
        )?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `curl` from `pod` with `extra` options (10 s at most): the response's status code
    /// (`000` when there was none).
    pub fn http_status(&self, pod: &Pod, url: &str, extra: &[&str]) -> Result<String> {
        self.curl_with(pod, url, &["-o", "/dev/null", "-w", "%{http_code}"], extra)
            .map(|out| out.trim().to_owned())
    }

    /// `curl` from `pod` with `extra` options (10 s at most): the response head, lower-cased.
    pub fn http_head(&self, pod: &Pod, url: &str, extra: &[&str]) -> Result<String> {
        self.curl_with(pod, url, &["-D", "-", "-o", "/dev/null"], extra)
            .map(|out| out.to_ascii_lowercase())
    }

    fn curl_with(&self, pod: &Pod, url: &str, output: &[&str], extra: &[&str]) -> Result<String> {
        let mut argv = vec!["curl", "-sS", "--max-time", "10"];
        argv.extend_from_slice(output);
        argv.extend_from_slice(extra);
        argv.push(url);
        let out = self.exec(pod, &argv)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `weft-testsrv serve --name <name>` on port 8080 in `pod` and waits for it.
    pub fn serve_testsrv(&mut self, pod: &Pod, name: &str) -> Result<()> {
        let bin = self.bin_dir.join("weft-testsrv").display().to_string();
        self.spawn_in(
            &pod.netns.clone(),
            &[&bin, "serve", "--name", name],
            &format!("testsrv-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        )
    }

    /// Changes a `weft-testsrv` backend's behaviour (`fail=30&status=503`, `delay_ms=5000`,
    /// `grpc_unavailable=100`, `reset=1`), over its own loopback (not through the mesh).
    pub fn testsrv_set(&self, pod: &Pod, query: &str) -> Result<()> {
        let (code, _) = http_get_in(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            &format!("/__set?{query}"),
        )?;
        ensure!(
            code == 200,
            "setting {query} on {} answered {code}",
            pod.name
        );
        Ok(())
    }

    /// How many requests a `weft-testsrv` backend served.
    pub fn testsrv_count(&self, pod: &Pod) -> Result<u64> {
        testsrv_counter(pod, "/__count")
    }

    /// How many of them were mirrored copies (their host ends in `-shadow`).
    pub fn testsrv_shadowed(&self, pod: &Pod) -> Result<u64> {
        testsrv_counter(pod, "/__count?shadowed")
    }

    /// Runs `weft-testsrv load <args>` in `pod` (its traffic is captured like any app's) and
    /// returns its JSON tally.
    pub fn load(&self, pod: &Pod, args: &[&str]) -> Result<serde_json::Value> {
        self.testsrv(pod, "load", args)
    }

    /// Runs `weft-testsrv <command> <args>` in `pod` and returns its JSON output.
    pub fn testsrv(&self, pod: &Pod, command: &str, args: &[&str]) -> Result<serde_json::Value> {
        let bin = self.bin_dir.join("weft-testsrv").display().to_string();
        let mut argv = vec![bin.as_str(), command];
        argv.extend_from_slice(args);
        let out = self.exec(pod, &argv)?;
        ensure!(
            out.status.success(),
            "weft-testsrv {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("weft-testsrv output")
    }

    /// Stops running helper programs (servers, captures) so their output is complete.
    pub fn stop_helpers(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

fn testsrv_counter(pod: &Pod, path: &str) -> Result<u64> {
    let (_, body) = http_get_in(
        &pod.netns_path(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        path,
    )?;
    Ok(body.trim().parse()?)
}
