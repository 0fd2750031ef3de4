//! Reading JSONL input safely: bounded line length; a byte order mark, CRLF
//! line endings, blank lines and invalid UTF-8 are reported with their line
//! (a spreadsheet export's usual damage) rather than guessed at.

use std::io::BufRead;

use casebook_engine::import::MAX_LINE_BYTES;

/// One physical line of input.
pub enum Line {
    /// A line of text (without its line ending).
    Text(String),
    /// The line was longer than the limit; its bytes were skipped.
    TooLong(usize),
    /// The line is not valid UTF-8; the byte offset of the first bad byte.
    BadUtf8(usize),
    /// The first line starts with a UTF-8 byte order mark.
    Bom,
    /// The line ends in CR LF (a Windows line ending).
    CrLf,
    /// The line is empty or only white space.
    Blank,
}

/// Reads lines without ever holding more than `MAX_LINE_BYTES` of one line.
pub struct Lines<R> {
    reader: R,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Lines { reader, number: 0 }
    }

    /// The next line and its 1-based number, or `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<(usize, Line)>> {
        let mut buf = Vec::new();
        let mut total = 0usize;
        let mut saw_any = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            saw_any = true;
            let (chunk, done) = match memchr::memchr(b'\n', available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            total += chunk.len();
            if total <= MAX_LINE_BYTES {
                if buf.is_empty() && done.is_some() {
                    // The whole line at hand (the usual case): one
                    // allocation of its size.
                    buf.reserve_exact(chunk.len());
                }
                buf.extend_from_slice(chunk);
            }
            let consumed = done.unwrap_or(available.len());
            self.reader.consume(consumed);
            if done.is_some() {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        self.number += 1;
        if total > MAX_LINE_BYTES {
            return Ok(Some((self.number, Line::TooLong(total))));
        }
        if buf.starts_with(b"\xef\xbb\xbf") {
            return Ok(Some((self.number, Line::Bom)));
        }
        if buf.last() == Some(&b'\r') {
            return Ok(Some((self.number, Line::CrLf)));
        }
        match String::from_utf8(buf) {
            Ok(s) if s.trim().is_empty() => Ok(Some((self.number, Line::Blank))),
            Ok(s) => Ok(Some((self.number, Line::Text(s)))),
            Err(e) => Ok(Some((
                self.number,
                Line::BadUtf8(e.utf8_error().valid_up_to()),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<(usize, String)> {
        let mut lines = Lines::new(input);
        let mut out = Vec::new();
        while let Some((n, l)) = lines.next_line().unwrap() {
            out.push((
                n,
                match l {
                    Line::Text(s) => s,
                    Line::TooLong(len) => format!("<too long {len}>"),
                    Line::BadUtf8(at) => format!("<bad utf8 at {at}>"),
                    Line::Bom => "<bom>".into(),
                    Line::CrLf => "<crlf>".into(),
                    Line::Blank => "<blank>".into(),
                },
            ));
        }
        out
    }

    #[test]
    fn bom_crlf_and_blank_lines_are_reported_and_a_missing_final_newline_is_fine() {
        let got = read_all(b"\xef\xbb\xbfa\nb\r\nb\n\n \nc");
        assert_eq!(
            got,
            vec![
                (1, "<bom>".into()),
                (2, "<crlf>".into()),
                (3, "b".into()),
                (4, "<blank>".into()),
                (5, "<blank>".into()),
                (6, "c".into())
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_without_being_buffered() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nok\n");
        let got = read_all(&input);
        assert_eq!(got[0], (1, format!("<too long {}>", MAX_LINE_BYTES + 10)));
        assert_eq!(got[1], (2, "ok".into()));
    }

    #[test]
    fn invalid_utf8_names_its_offset() {
        let got = read_all(b"ok\nab\xffcd\n");
        assert_eq!(got[1], (2, "<bad utf8 at 2>".into()));
    }
}
