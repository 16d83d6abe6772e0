//! Server-sent events (WHATWG HTML §9.2) as they pass through: split into
//! events incrementally, so that each is sent on as soon as it is whole,
//! and read or rewritten only when it must be (a `tools/list` result).

/// Splits a byte stream into raw events, each with the blank line that
/// ends it. Lines end in CRLF, LF or CR; a CR at the end of the input waits
/// for the next chunk, which may start with its LF.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Where the next line starts.
    line_start: usize,
    /// Where scanning resumes.
    pos: usize,
}

impl Splitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held that are not yet a whole event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Everything held, whole or not (at the end of the stream, or to stop
    /// splitting).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.line_start = 0;
        self.pos = 0;
        std::mem::take(&mut self.buf)
    }

    /// The next whole event, if the input holds one.
    pub fn next_event(&mut self) -> Option<Vec<u8>> {
        while let Some(offset) = self.buf.get(self.pos..)?.iter().position(|&b| b == b'\n' || b == b'\r') {
            let at = self.pos + offset;
            let eol = match self.buf.get(at) {
                Some(b'\r') => match self.buf.get(at + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A CR at the end: its LF may be in the next chunk.
                    None => return None,
                },
                _ => 1,
            };
            let blank = at == self.line_start;
            self.pos = at + eol;
            self.line_start = self.pos;
            if blank {
                let rest = self.buf.split_off(self.pos);
                let event = std::mem::replace(&mut self.buf, rest);
                self.pos = 0;
                self.line_start = 0;
                return Some(event);
            }
        }
        self.pos = self.buf.len();
        None
    }
}

/// The fields of one event that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Data lines joined with LF; `None` when the event has no data field.
    pub data: Option<String>,
    /// The other lines (`id:`, `event:`, `retry:`, comments), verbatim and
    /// in order, without their line ends.
    pub other_lines: Vec<String>,
}

impl Event {
    /// Parses a raw event. Not UTF-8 is `None`: such an event is passed on
    /// untouched, never rewritten.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut data: Vec<&str> = Vec::new();
        let mut other_lines = Vec::new();
        for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if field == "data" {
                data.push(value);
            } else {
                other_lines.push(line.to_owned());
            }
        }
        let data = (!data.is_empty()).then(|| data.join("\n"));
        Some(Self { data, other_lines })
    }

    /// The event with new data on one line, its other lines kept.
    pub fn with_data(&self, data: &str) -> Vec<u8> {
        let mut out = String::new();
        for line in &self.other_lines {
            out.push_str(line);
            out.push('\n');
        }
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut s = Splitter::default();
        let mut events = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(e) = s.next_event() {
                events.push(e);
            }
        }
        (events, s.take_rest())
    }

    #[test]
    fn events_end_at_blank_lines_whatever_the_line_ends() {
        let stream = b"id: 1\ndata: a\n\nid: 2\r\ndata: b\r\n\r\ndata: c\r\rdata: d\n";
        let (events, rest) = split_all(&[stream]);
        assert_eq!(
            events,
            [b"id: 1\ndata: a\n\n".to_vec(), b"id: 2\r\ndata: b\r\n\r\n".to_vec(), b"data: c\r\r".to_vec()]
        );
        assert_eq!(rest, b"data: d\n");
    }

    #[test]
    fn chunks_split_anywhere() {
        let stream: &[u8] = b": ping\n\nevent: message\r\ndata: {\"x\":1}\r\n\r\ndata: 2\r\r\n";
        let (whole, _) = split_all(&[stream]);
        assert_eq!(whole.len(), 3);
        // Every split point, including between CR and LF, gives the same events.
        for at in 0..stream.len() {
            let (events, rest) = split_all(&[&stream[..at], &stream[at..]]);
            assert_eq!(events, whole, "split at {at}");
            assert!(rest.is_empty());
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split_all(&bytes).0, whole);
    }

    #[test]
    fn a_cr_at_the_end_waits_for_more() {
        let mut s = Splitter::default();
        s.push(b"data: x\r\n\r");
        assert_eq!(s.next_event(), None);
        s.push(b"\n");
        assert_eq!(s.next_event().unwrap(), b"data: x\r\n\r\n");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn fields_are_read_and_rewritten() {
        let e = Event::parse(b"id: 7\nevent: message\ndata: {\"a\":\ndata:1}\n: comment\n\n").unwrap();
        assert_eq!(e.data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(e.other_lines, ["id: 7", "event: message", ": comment"]);
        assert_eq!(e.with_data("{\"b\":2}"), b"id: 7\nevent: message\n: comment\ndata: {\"b\":2}\n\n");
        assert_eq!(Event::parse(b"id: 1\n\n").unwrap().data, None);
        assert_eq!(Event::parse(b"data\n\n").unwrap().data.as_deref(), Some(""));
        assert_eq!(Event::parse(b"data:\ndata:\n\n").unwrap().data.as_deref(), Some("\n"));
        assert!(Event::parse(b"data: \xff\n\n").is_none());
    }
}
