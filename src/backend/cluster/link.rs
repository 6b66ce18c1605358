//! A subscriber connection of our own to one cluster node: RESP2 over plain TCP, split
//! into a [`Reader`] (the node's notifier thread blocks on it) and a [`Writer`] (any
//! thread sends `SSUBSCRIBE` on it at once, while the reader waits). redis-rs's sync
//! connection cannot serve here: one `&mut` for reading and writing (a waiter would
//! wait for the reader's timeout to subscribe), its `PubSub` has no `SSUBSCRIBE` and
//! drops RESP2 `smessage`s and `sunsubscribe` notices, and its `recv_response` skips
//! the next reply after a read timeout (a message lost). Here a read that times out
//! keeps what it had read in the buffer.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use redis::{ErrorKind, RedisConnectionInfo, RedisError, ServerErrorKind};

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `+...` or a bulk string: bytes.
    Text(Vec<u8>),
    /// `-CODE detail`.
    Error(String),
    Int(i64),
    /// `$-1` or `*-1`.
    Nil,
    Array(Vec<Frame>),
}

impl Frame {
    /// The text of a `Text` frame.
    pub fn text(&self) -> Option<&[u8]> {
        if let Frame::Text(t) = self { Some(t) } else { None }
    }

    /// A server's error reply as redis-rs's error, so that `Error::from_redis` classifies
    /// it as it does every other reply (`NOPERM` is an ACL refusal, `MOVED` names a node).
    pub fn server_error(text: &str) -> RedisError {
        let code = text.split(' ').next().unwrap_or("");
        let kind = match code {
            "MOVED" => ErrorKind::Server(ServerErrorKind::Moved),
            "ASK" => ErrorKind::Server(ServerErrorKind::Ask),
            "CLUSTERDOWN" => ErrorKind::Server(ServerErrorKind::ClusterDown),
            "TRYAGAIN" => ErrorKind::Server(ServerErrorKind::TryAgain),
            "NOPERM" => ErrorKind::Server(ServerErrorKind::NoPerm),
            "WRONGPASS" | "NOAUTH" => ErrorKind::AuthenticationFailed,
            "LOADING" => ErrorKind::Server(ServerErrorKind::BusyLoading),
            _ => ErrorKind::Server(ServerErrorKind::ResponseError),
        };
        // redis-rs reads a redirect's slot and node from the detail: `<slot> <host:port>`.
        let detail = match kind {
            ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => text[code.len()..].trim_start(),
            _ => text,
        };
        RedisError::from((kind, "the cluster node refused", detail.to_owned()))
    }
}

/// The reading half: a buffer that outlives read timeouts.
pub(crate) struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The writing half (a clone of the same socket).
pub(crate) struct Writer {
    stream: TcpStream,
}

/// `args` as a RESP2 command.
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Writer {
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.stream.write_all(&command(args))
    }

    /// Closes the socket both ways: the reader's next read ends.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Where and how to connect.
pub(crate) struct Dial<'a> {
    pub host: &'a str,
    pub port: u16,
    pub login: &'a RedisConnectionInfo,
    /// `CLIENT SETNAME`.
    pub name: &'a str,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Connects, logs in (`AUTH`, as the template's credentials say) and names the
/// connection; then the halves. Reads time out after `read_timeout` until the caller
/// sets another.
pub(crate) fn connect(d: &Dial<'_>) -> Result<(Reader, Writer), RedisError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{} resolves to no address", d.host));
    let mut stream = None;
    for addr in (d.host, d.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, d.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(d.read_timeout))?;
    stream.set_write_timeout(Some(d.write_timeout))?;
    let mut reader = Reader { stream: stream.try_clone()?, buf: Vec::new() };
    let mut writer = Writer { stream };
    if let Some(password) = d.login.password() {
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = d.login.username() {
            auth.push(user.as_bytes());
        }
        auth.push(password.as_bytes());
        writer.send(&auth)?;
        reader.expect_ok()?;
    }
    writer.send(&[b"CLIENT", b"SETNAME", d.name.as_bytes()])?;
    reader.expect_ok()?;
    Ok((reader, writer))
}

impl Reader {
    /// The next frame; `Ok(None)` when the read timed out first (what was read stays).
    pub fn next(&mut self) -> Result<Option<Frame>, RedisError> {
        loop {
            if let Some((frame, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                // A signal (the process was stopped and continued): nothing was lost.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// The reply to a command while connecting: `+OK`, or its error.
    fn expect_ok(&mut self) -> Result<(), RedisError> {
        match self.next()? {
            Some(Frame::Text(_)) => Ok(()),
            Some(Frame::Error(e)) => Err(Frame::server_error(&e)),
            Some(other) => Err(RedisError::from((ErrorKind::Parse, "unexpected reply", format!("{other:?}")))),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply while connecting").into()),
        }
    }
}

fn protocol_error(what: &str) -> RedisError {
    RedisError::from((ErrorKind::Parse, "not a RESP2 reply", what.to_owned()))
}

/// The first frame of `buf` and its length, or `None` when `buf` holds only part of it.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, RedisError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let (kind, line) = match buf.split_first() {
        Some((k, _)) => (*k, &buf[1..end]),
        None => return Ok(None),
    };
    let head = end + 2;
    let number = || -> Result<i64, RedisError> {
        std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or_else(|| protocol_error("a bad length"))
    };
    match kind {
        b'+' => Ok(Some((Frame::Text(line.to_vec()), head))),
        b'-' => Ok(Some((Frame::Error(String::from_utf8_lossy(line).into_owned()), head))),
        b':' => Ok(Some((Frame::Int(number()?), head))),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Frame::Nil, head)));
            }
            let n = usize::try_from(n).map_err(|_| protocol_error("a bad length"))?;
            if buf.len() < head + n + 2 {
                return Ok(None);
            }
            Ok(Some((Frame::Text(buf[head..head + n].to_vec()), head + n + 2)))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Frame::Nil, head)));
            }
            let mut items = Vec::new();
            let mut at = head;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((f, used)) => {
                        items.push(f);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Frame::Array(items), at)))
        }
        _ => Err(protocol_error("an unknown type byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_whole_or_not_at_all() {
        let msg = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\n!a b \r\n";
        let (f, used) = parse(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        let text = |s: &[u8]| Frame::Text(s.to_vec());
        assert_eq!(f, Frame::Array(vec![text(b"smessage"), text(b"ch"), text(b"!a b ")]));
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"-MOVED 5 h:1\r\n").unwrap().unwrap().0, Frame::Error("MOVED 5 h:1".into()));
        assert_eq!(parse(b":-3\r\n+OK\r\n").unwrap().unwrap(), (Frame::Int(-3), 5));
        assert_eq!(parse(b"$-1\r\n").unwrap().unwrap().0, Frame::Nil);
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$x\r\n").is_err());
    }

    #[test]
    fn commands_are_resp_arrays_and_errors_keep_their_kind() {
        assert_eq!(command(&[b"SSUBSCRIBE", b"a{b}"]), b"*2\r\n$10\r\nSSUBSCRIBE\r\n$4\r\na{b}\r\n");
        let moved = Frame::server_error("MOVED 3999 127.0.0.1:7001");
        assert_eq!(moved.kind(), ErrorKind::Server(ServerErrorKind::Moved));
        assert_eq!(moved.redirect_node(), Some(("127.0.0.1:7001", 3999)));
        assert_eq!(Frame::server_error("NOPERM no").kind(), ErrorKind::Server(ServerErrorKind::NoPerm));
    }
}
