//! Incremental server-sent events parser (WHATWG HTML "event stream" rules).
//!
//! Bytes arrive in arbitrary pieces: a piece may end inside a UTF-8 sequence, inside a field
//! name, or between the `\r` and `\n` of a CRLF. Lines are buffered as bytes and decoded only once
//! complete, and a trailing `\r` is remembered so that a `\n` opening the next piece is not read
//! as a second (empty) line, which would dispatch an event too early.

use crate::error::AdapterError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (the spec's default type is "message").
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    provider: &'static str,
}

impl SseParser {
    pub fn new(provider: &'static str) -> Self {
        SseParser { provider, ..Default::default() }
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, AdapterError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                None => {
                    self.line.extend_from_slice(rest);
                    break;
                }
                Some(i) => {
                    self.line.extend_from_slice(&rest[..i]);
                    self.after_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// The body ended. A final event without its blank line is still dispatched: several
    /// OpenAI-compatible servers end with `data: [DONE]\n` and nothing after it.
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, AdapterError> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut out)?;
        }
        self.dispatch(&mut out);
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), AdapterError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let line = std::str::from_utf8(line)
            .map_err(|e| AdapterError::bad_payload(self.provider, format!("stream line is not UTF-8: {e}")))?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.id = Some(value.to_owned()),
            // `retry` and unknown fields are ignored, as the spec says.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseEvent { event, data: std::mem::take(&mut self.data), id: self.id.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_split(input: &[u8], at: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new("test");
        let mut out = Vec::new();
        let mut start = 0;
        for &i in at {
            out.extend(p.feed(&input[start..i]).unwrap());
            start = i;
        }
        out.extend(p.feed(&input[start..]).unwrap());
        out.extend(p.finish().unwrap());
        out
    }

    #[test]
    fn fields_comments_multiline_and_line_endings() {
        let input = b": keep-alive\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\nid: 7\rdata: x\r\rdata: \xc3\xa9\n\n";
        let expected = vec![
            SseEvent { event: Some("a".into()), data: "one\ntwo".into(), id: None },
            SseEvent { event: None, data: "x".into(), id: Some("7".into()) },
            SseEvent { event: None, data: "é".into(), id: Some("7".into()) },
        ];
        assert_eq!(parse_split(input, &[]), expected);
        for i in 0..=input.len() {
            assert_eq!(parse_split(input, &[i]), expected, "split at {i}");
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split(input, &every), expected);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_tail_is_flushed() {
        let input = b"event: ping\n\ndata: [DONE]\n";
        assert_eq!(parse_split(input, &[]), vec![SseEvent { event: None, data: "[DONE]".into(), id: None }]);
    }
}
