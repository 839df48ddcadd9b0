//! `mkosi serve`: serve the output directory over HTTP on port 8081 (all interfaces),
//! the way `python3 -m http.server` does: GET and HEAD, `index.html`/`index.htm` or a
//! listing for directories, a redirect for directories without a trailing slash, and
//! `If-Modified-Since`. With `StorageTargetMode=` the disk image is also exported via
//! NVMe-TCP by systemd-storagetm.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;

/// The port upstream serves on.
pub const PORT: u16 = 8081;

/// Bind the dual-stack wildcard address (`[::]`), or `0.0.0.0` without IPv6.
pub fn bind(port: u16) -> Result<TcpListener> {
    TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("cannot listen on port {port}"))
}

/// Serve `root` on `listener` until the process is interrupted.
pub fn serve(listener: TcpListener, root: PathBuf) -> Result<()> {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let root = root.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &root);
        });
    }
    Ok(())
}

/// Kills systemd-storagetm when serving ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether systemd-storagetm runs next to the HTTP server.
fn storage_target(config: &Config, root: bool, storagetm: Option<&Path>) -> Result<bool> {
    let mode = config.str("StorageTargetMode").unwrap_or("auto");
    if mode == "disabled" || (mode == "auto" && !root) {
        return Ok(false);
    }
    if config.output_format() != OutputFormat::Disk {
        if mode == "enabled" {
            bail!("Storage target mode is only supported for the 'disk' output format");
        }
        return Ok(false);
    }
    if storagetm.is_none() {
        if mode == "enabled" {
            bail!("Storage target mode enabled but systemd-storagetm is not installed");
        }
        return Ok(false);
    }
    Ok(true)
}

pub fn run_serve(config: &Config, cwd: &Path) -> Result<()> {
    let dir = config.output_dir_or_cwd(cwd);
    let storagetm = super::find_binary("/usr/lib/systemd/systemd-storagetm");
    let _storagetm = match storage_target(config, super::is_root(), storagetm.as_deref())? {
        true => {
            let tool = storagetm.context("systemd-storagetm is not installed")?;
            let child = Command::new(&tool)
                .arg(config.output_with_format())
                .current_dir(&dir)
                .spawn()
                .with_context(|| format!("running {}", tool.display()))?;
            Some(KillOnDrop(child))
        }
        false => None,
    };
    let listener = bind(PORT)?;
    let addr = listener.local_addr().context("listening socket")?;
    let host = if addr.is_ipv6() { format!("[{}]", addr.ip()) } else { addr.ip().to_string() };
    println!("Serving HTTP on {} port {} (http://{host}:{}/) ...", addr.ip(), addr.port(), addr.port());
    let _ = std::io::stdout().flush();
    serve(listener, dir)
}

/// Percent-decode a URL path (invalid escapes stay as they are).
fn unquote(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Percent-encode a file name for a link.
fn quote(name: &[u8]) -> String {
    let mut s = String::new();
    for &c in name {
        if c.is_ascii_alphanumeric() || b"_.-~/".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#x27;")
}

/// Map a request path to a file below `root`: the query and fragment are dropped,
/// `.` and `..` components and empty ones are ignored, like python's http.server.
pub fn translate_path(root: &Path, url: &str) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let trailing = path.ends_with('/');
    let decoded = unquote(path);
    let mut out = root.to_path_buf();
    for part in decoded.split(|&c| c == b'/') {
        if part.is_empty() || part == b"." || part == b".." {
            continue;
        }
        out.push(std::ffi::OsStr::from_bytes(part));
    }
    if trailing {
        out.push("");
    }
    out
}

fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html",
        "txt" | "conf" | "manifest" | "changelog" | "sha256sums" => "text/plain",
        "json" => "application/json",
        "css" => "text/css",
        "js" => "text/javascript",
        "xml" => "text/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "gz" => "application/gzip",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "tar" => "application/x-tar",
        "gpg" | "asc" => "application/pgp-signature",
        _ => "application/octet-stream",
    }
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Days since 1970-01-01 → (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The time in request log lines (`26/Nov/2026 12:18:05`, UTC).
pub fn log_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{d:02}/{}/{y} {:02}:{:02}:{:02}", MONTHS[(m - 1) as usize], rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parse an HTTP date back to seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut w = s.split_whitespace().skip(1);
    let d: i64 = w.next()?.parse().ok()?;
    let month = w.next()?;
    let m = MONTHS.iter().position(|x| *x == month)? as i64 + 1;
    let y: i64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil (inverse of civil_from_days).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    File(File, u64),
}

fn error(status: u16, reason: &'static str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        \
         <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        \
         <p>Error code: {status}</p>\n        <p>Message: {}.</p>\n    </body>\n</html>\n",
        html_escape(message)
    );
    Response {
        status,
        reason,
        headers: vec![("Content-Type".into(), "text/html;charset=utf-8".into()), ("Connection".into(), "close".into())],
        body: Body::Bytes(body.into_bytes()),
    }
}

fn listing(dir: &Path, url_path: &str) -> Response {
    use std::os::unix::ffi::OsStrExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return error(404, "Not Found", "No permission to list directory");
    };
    let mut names: Vec<(Vec<u8>, bool, bool)> = rd
        .flatten()
        .map(|e| {
            let p = e.path();
            let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink());
            (e.file_name().as_bytes().to_vec(), p.is_dir(), is_link)
        })
        .collect();
    names.sort_by_key(|(n, _, _)| String::from_utf8_lossy(n).to_lowercase());
    let shown = String::from_utf8_lossy(&unquote(url_path.split(['?', '#']).next().unwrap_or("/"))).into_owned();
    let title = format!("Directory listing for {}", html_escape(&shown));
    let mut body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n\
         <body>\n<h1>{title}</h1>\n<hr>\n<ul>\n"
    );
    for (name, is_dir, is_link) in names {
        let mut display = String::from_utf8_lossy(&name).into_owned();
        let mut link = name.clone();
        if is_dir {
            display.push('/');
            link.push(b'/');
        }
        if is_link {
            display.push('@');
        }
        body.push_str(&format!("<li><a href=\"{}\">{}</a></li>\n", quote(&link), html_escape(&display)));
    }
    body.push_str("</ul>\n<hr>\n</body>\n</html>\n");
    Response {
        status: 200,
        reason: "OK",
        headers: vec![("Content-type".into(), "text/html; charset=utf-8".into())],
        body: Body::Bytes(body.into_bytes()),
    }
}

/// The response to a GET/HEAD of `url` below `root`.
fn respond(root: &Path, url: &str, if_modified_since: Option<&str>) -> Response {
    let mut path = translate_path(root, url);
    if path.is_dir() {
        let bare = url.split(['?', '#']).next().unwrap_or_default();
        if !bare.ends_with('/') {
            let rest = &url[bare.len()..];
            let mut r =
                Response { status: 301, reason: "Moved Permanently", headers: vec![], body: Body::Bytes(vec![]) };
            r.headers.push(("Location".into(), format!("{bare}/{rest}")));
            r.headers.push(("Content-Length".into(), "0".into()));
            return r;
        }
        match ["index.html", "index.htm"].iter().map(|i| path.join(i)).find(|p| p.is_file()) {
            Some(index) => path = index,
            None => return listing(&path, url),
        }
    }
    // A trailing slash on a file is "not found", as in python.
    if url.split(['?', '#']).next().unwrap_or_default().ends_with('/') {
        return error(404, "Not Found", "File not found");
    }
    let Ok(file) = File::open(&path) else { return error(404, "Not Found", "File not found") };
    let Ok(md) = file.metadata() else { return error(404, "Not Found", "File not found") };
    let mtime = md.modified().unwrap_or(UNIX_EPOCH);
    let mtime_secs = mtime.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if let Some(since) = if_modified_since.and_then(parse_http_date) {
        if mtime_secs <= since {
            return Response { status: 304, reason: "Not Modified", headers: vec![], body: Body::Bytes(vec![]) };
        }
    }
    Response {
        status: 200,
        reason: "OK",
        headers: vec![
            ("Content-type".into(), content_type(&path).into()),
            ("Content-Length".into(), md.len().to_string()),
            ("Last-Modified".into(), http_date(mtime)),
        ],
        body: Body::File(file, md.len()),
    }
}

fn handle(stream: TcpStream, root: &Path) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let peer = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let request = request.trim_end().to_string();
        if request.is_empty() {
            continue;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                break;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let words: Vec<&str> = request.split_whitespace().collect();
        let (method, url, version) = match words.as_slice() {
            [m, u, v] => (*m, *u, *v),
            [m, u] => (*m, *u, "HTTP/0.9"),
            _ => ("", "", "HTTP/1.0"),
        };
        let keep_alive =
            version == "HTTP/1.1" && !header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let mut resp = match method {
            "GET" | "HEAD" => respond(root, url, header("if-modified-since")),
            "" => error(400, "Bad Request", "Bad request syntax"),
            _ => error(501, "Not Implemented", &format!("Unsupported method ('{method}')")),
        };
        let close = !keep_alive || resp.status >= 400;
        let size = match &resp.body {
            Body::Bytes(b) => b.len().to_string(),
            Body::File(_, n) => n.to_string(),
        };
        eprintln!("{peer} - - [{}] \"{request}\" {} -", log_date(SystemTime::now()), resp.status);
        let mut head = format!(
            "HTTP/1.0 {} {}\r\nServer: mkosi\r\nDate: {}\r\n",
            resp.status,
            resp.reason,
            http_date(SystemTime::now())
        );
        let has_length = resp.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length && matches!(resp.status, 200 | 400..=599) {
            head.push_str(&format!("Content-Length: {size}\r\n"));
        }
        head.push_str(if close { "Connection: close\r\n" } else { "Connection: keep-alive\r\n" });
        head.push_str("\r\n");
        // HTTP/1.1 keep-alive needs a 1.1 status line.
        let head = if keep_alive { head.replacen("HTTP/1.0", "HTTP/1.1", 1) } else { head };
        out.write_all(head.as_bytes())?;
        if method == "GET" || (method != "HEAD" && resp.status >= 400) {
            match &mut resp.body {
                Body::Bytes(b) => out.write_all(b)?,
                Body::File(f, _) => {
                    std::io::copy(f, &mut out)?;
                }
            }
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn request(addr: std::net::SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn server() -> (tempfile::TempDir, std::net::SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("image.raw"), b"0123456789").unwrap();
        std::fs::create_dir(dir.path().join("sub dir")).unwrap();
        std::fs::write(dir.path().join("sub dir/a.txt"), b"hello").unwrap();
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || serve(listener, root));
        (dir, addr)
    }

    #[test]
    fn get_and_head() {
        let (_dir, addr) = server();
        let r = request(addr, "GET /image.raw HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"), "{r}");
        assert!(r.contains("Content-type: application/octet-stream\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n0123456789"), "{r}");

        let r = request(addr, "HEAD /sub%20dir/a.txt HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n") && r.contains("Content-Length: 5\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");

        // Keep-alive: two requests on one HTTP/1.1 connection.
        let r = request(
            addr,
            "GET /sub%20dir/a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /image.raw HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(r.contains("hello") && r.ends_with("0123456789"), "{r}");
    }

    #[test]
    fn directories_errors_and_traversal() {
        let (_dir, addr) = server();
        let r = request(addr, "GET /sub%20dir HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 301 Moved Permanently\r\n") && r.contains("Location: /sub%20dir/\r\n"), "{r}");
        let r = request(addr, "GET / HTTP/1.0\r\n\r\n");
        assert!(r.contains("<title>Directory listing for /</title>"), "{r}");
        assert!(r.contains("<li><a href=\"image.raw\">image.raw</a></li>"), "{r}");
        assert!(r.contains("<li><a href=\"sub%20dir/\">sub dir/</a></li>"), "{r}");
        let r = request(addr, "GET /missing HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
        let r = request(addr, "GET /../../../etc/passwd HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
        let r = request(addr, "POST /image.raw HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 501 Not Implemented\r\n"), "{r}");
        let r = request(addr, "GET /image.raw HTTP/1.0\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 304 Not Modified\r\n"), "{r}");
    }

    #[test]
    fn dates_and_paths() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(log_date(t), "06/Nov/1994 08:49:37");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("garbage"), None);
        let root = Path::new("/srv");
        assert_eq!(translate_path(root, "/a/../b?x=1"), Path::new("/srv/a/b"));
        assert_eq!(translate_path(root, "/%2e%2e/x"), Path::new("/srv/x"));
        assert_eq!(translate_path(root, "/d/"), Path::new("/srv/d/"));
    }

    #[test]
    fn storage_target_modes() {
        let c = |v: serde_json::Value| crate::runtime::tests::config(v);
        let tm = Some(Path::new("/usr/lib/systemd/systemd-storagetm"));
        assert!(!storage_target(&c(serde_json::json!({"Format": "disk"})), false, tm).unwrap());
        assert!(storage_target(&c(serde_json::json!({"Format": "disk"})), true, tm).unwrap());
        assert!(!storage_target(&c(serde_json::json!({"Format": "disk"})), true, None).unwrap());
        assert!(!storage_target(&c(serde_json::json!({"Format": "directory"})), true, tm).unwrap());
        let err =
            storage_target(&c(serde_json::json!({"Format": "directory", "StorageTargetMode": "enabled"})), true, tm)
                .err()
                .unwrap();
        assert_eq!(err.to_string(), "Storage target mode is only supported for the 'disk' output format");
        let err =
            storage_target(&c(serde_json::json!({"Format": "disk", "StorageTargetMode": "enabled"})), false, None)
                .err()
                .unwrap();
        assert_eq!(err.to_string(), "Storage target mode enabled but systemd-storagetm is not installed");
        assert!(!storage_target(&c(serde_json::json!({"Format": "disk", "StorageTargetMode": "disabled"})), true, tm)
            .unwrap());
    }
}
