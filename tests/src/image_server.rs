//! A plain HTTP/1.1 file server for the import tests: serves named byte blobs, optionally at a
//! bounded rate (so that an import's progress can be watched), on every address of the host,
//! where pods reach it through the node's IP. It stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct ImageServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A file: its bytes and, if set, the most bytes per second it is served at.
pub struct Served {
    pub bytes: Vec<u8>,
    pub rate: Option<usize>,
}

impl ImageServer {
    pub fn start(files: HashMap<String, Served>) -> ImageServer {
        let listener = TcpListener::bind("0.0.0.0:0").expect("binding the image server");
        let port = listener.local_addr().expect("its address").port();
        listener.set_nonblocking(true).expect("non-blocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(files);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let files = files.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, &files);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        ImageServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve(stream: TcpStream, files: &HashMap<String, Served>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let mut out = stream;
    let Some(file) = files.get(path.trim_start_matches('/')) else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        file.bytes.len()
    )?;
    let start = Instant::now();
    let mut sent = 0usize;
    for chunk in file.bytes.chunks(256 * 1024) {
        out.write_all(chunk)?;
        sent += chunk.len();
        if let Some(rate) = file.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    out.flush()
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
