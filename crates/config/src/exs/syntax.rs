//! The Elixir subset of Gatehouse's config, read as data: tokens, then calls with
//! positional and keyword arguments and `do ... end` blocks. Nothing is evaluated; anything
//! outside the subset is an error at its offset.

use std::ops::Range;

/// A value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Atom(String),
    Bool(bool),
    Nil,
    /// A module name, as `Gatehouse.ACME.Provider`.
    Alias(String),
    List(Vec<Node>),
    Keywords(Vec<(String, Node)>),
    Map(Vec<(Node, Node)>),
    Tuple(Vec<Node>),
    /// A call used as a value, as `endpoint(:svc, :http)`.
    Call(Box<Call>),
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub at: usize,
}

/// `name args, key: value do ... end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub at: usize,
    pub args: Vec<Node>,
    pub keywords: Vec<(String, Node)>,
    pub block: Option<Vec<Call>>,
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub span: Range<usize>,
    pub message: String,
}

fn error<T>(at: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError { span: at..at + 1, message: message.into() })
}

const NOT_RUN: &str = "this file is read as data, never run";
/// Elixir's words for code, refused wherever they stand.
const CODE: [&str; 14] = [
    "def",
    "defp",
    "defmodule",
    "defmacro",
    "fn",
    "case",
    "if",
    "unless",
    "cond",
    "for",
    "with",
    "quote",
    "require",
    "use",
];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// `name:` opening a keyword pair.
    Key(String),
    Alias(String),
    Atom(String),
    Str(String),
    Int(i64),
    Open(char),
    Close(char),
    /// `%{`
    MapOpen,
    Comma,
    Arrow,
    Newline,
}

fn tokens(text: &str) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let bytes = text.as_bytes();
    let mut out: Vec<(Token, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let word = |start: usize| {
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if end < bytes.len() && matches!(bytes[end], b'?' | b'!') {
            end += 1;
        }
        end
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                // Inside brackets and after a trailing comma, a line goes on.
                let continues =
                    depth > 0 || matches!(out.last(), Some((Token::Comma | Token::Key(_) | Token::Newline, _)) | None);
                if !continues {
                    out.push((Token::Newline, i));
                }
                i += 1;
            }
            b'"' => {
                let (value, end) = string(text, i)?;
                out.push((Token::Str(value), i));
                i = end;
            }
            b':' if bytes.get(i + 1) == Some(&b'"') => {
                let (value, end) = string(text, i + 1)?;
                out.push((Token::Atom(value), i));
                i = end;
            }
            b':' if bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') => {
                let end = word(i + 1);
                out.push((Token::Atom(text[i + 1..end].to_string()), i));
                i = end;
            }
            b'0'..=b'9' => {
                let mut end = i;
                while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'_') {
                    end += 1;
                }
                if end < bytes.len() && (bytes[end] == b'.' || bytes[end].is_ascii_alphabetic()) {
                    return error(i, "only whole numbers are supported (as 30_000)");
                }
                let digits: String = text[i..end].chars().filter(|c| *c != '_').collect();
                let n = digits.parse().or_else(|_| error(i, "this number is too large"))?;
                out.push((Token::Int(n), i));
                i = end;
            }
            b'a'..=b'z' | b'_' => {
                let end = word(i);
                let name = text[i..end].to_string();
                if CODE.contains(&name.as_str()) {
                    return error(i, format!("`{name}` is not supported ({NOT_RUN})"));
                }
                // `name:` followed by a space is a keyword key; `name::x` is not.
                if bytes.get(end) == Some(&b':') && bytes.get(end + 1).is_none_or(|b| b.is_ascii_whitespace()) {
                    out.push((Token::Key(name), i));
                    i = end + 1;
                } else {
                    out.push((Token::Ident(name), i));
                    i = end;
                }
            }
            b'A'..=b'Z' => {
                let mut end = word(i);
                while bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_uppercase) {
                    end = word(end + 1);
                }
                out.push((Token::Alias(text[i..end].to_string()), i));
                i = end;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                out.push((Token::Open(c as char), i));
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                out.push((Token::Close(c as char), i));
                i += 1;
            }
            b'%' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                out.push((Token::MapOpen, i));
                i += 2;
            }
            b',' => {
                out.push((Token::Comma, i));
                i += 1;
            }
            b'=' if bytes.get(i + 1) == Some(&b'>') => {
                out.push((Token::Arrow, i));
                i += 2;
            }
            b'-' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                return error(i, "negative numbers have no use here");
            }
            _ => {
                let shown = text[i..].chars().next().unwrap_or('?');
                let what = match c {
                    b'|' | b'=' | b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'&' | b'!' => "operators are",
                    b'@' => "module attributes are",
                    b'~' => "sigils are",
                    b'.' => "calls into modules are",
                    _ => "this character is",
                };
                return error(i, format!("`{shown}`: {what} not supported ({NOT_RUN})"));
            }
        }
    }
    out.push((Token::Newline, text.len()));
    Ok(out)
}

/// A double-quoted string starting at `start`: its value and the offset after it.
fn string(text: &str, start: usize) -> Result<(String, usize), SyntaxError> {
    let mut value = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let at = start + 1 + offset;
        match c {
            '"' => return Ok((value, at + 1)),
            '#' if text[at..].starts_with("#{") => {
                return error(at, format!("string interpolation is not supported ({NOT_RUN})"));
            }
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 's')) => value.push(' '),
                Some((_, 'e')) => value.push('\u{1b}'),
                Some((_, '0')) => value.push('\0'),
                Some((_, c @ ('"' | '\\' | '#'))) => value.push(c),
                _ => return error(at, "unknown escape in a string"),
            },
            c => value.push(c),
        }
    }
    error(start, "this string is not closed")
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
}

/// Parses the whole file into its top-level calls.
pub fn parse(text: &str) -> Result<Vec<Call>, SyntaxError> {
    let mut parser = Parser { tokens: tokens(text)?, next: 0 };
    let calls = parser.statements(false)?;
    Ok(calls)
}

impl Parser {
    fn peek(&self) -> Option<&(Token, usize)> {
        self.tokens.get(self.next)
    }

    fn at(&self) -> usize {
        self.peek().map_or(0, |t| t.1)
    }

    fn bump(&mut self) -> Option<(Token, usize)> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn skip_newlines(&mut self) {
        while matches!(self.peek(), Some((Token::Newline, _))) {
            self.next += 1;
        }
    }

    /// Calls up to the end of the file, or up to `end` in a block.
    fn statements(&mut self, in_block: bool) -> Result<Vec<Call>, SyntaxError> {
        let mut calls = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek().cloned() {
                None => {
                    if in_block {
                        return error(self.tokens.last().map_or(0, |t| t.1), "`do` without its `end`");
                    }
                    return Ok(calls);
                }
                Some((Token::Ident(word), at)) if word == "end" => {
                    if !in_block {
                        return error(at, "`end` without a `do`");
                    }
                    self.next += 1;
                    return Ok(calls);
                }
                Some((Token::Ident(name), at)) => {
                    self.next += 1;
                    let call = self.call(name, at, true)?;
                    match self.peek() {
                        Some((Token::Newline, _)) | None => {}
                        Some((Token::Ident(word), _)) if word == "end" && in_block => {}
                        Some((_, at)) => return error(*at, "one directive per line"),
                    }
                    calls.push(call);
                }
                Some((_, at)) => return error(at, "expected a directive, as `service :name do`"),
            }
        }
    }

    /// The arguments and block of a call whose name was just read.
    fn call(&mut self, name: String, at: usize, statement: bool) -> Result<Call, SyntaxError> {
        let mut call = Call { name, at, args: Vec::new(), keywords: Vec::new(), block: None };
        let parenthesised = matches!(self.peek(), Some((Token::Open('('), open)) if *open == at + call.name.len());
        if parenthesised {
            self.next += 1;
            self.arguments(&mut call, Some(')'))?;
        } else if statement {
            self.arguments(&mut call, None)?;
        }
        if statement && matches!(self.peek(), Some((Token::Ident(w), _)) if w == "do") {
            self.next += 1;
            call.block = Some(self.statements(true)?);
        }
        Ok(call)
    }

    /// Comma-separated values then keyword pairs, up to `close` (or the end of the line or a
    /// `do` without parentheses).
    fn arguments(&mut self, call: &mut Call, close: Option<char>) -> Result<(), SyntaxError> {
        let ends = |p: &Parser| match (p.peek(), close) {
            (Some((Token::Close(c), _)), Some(want)) => *c == want,
            (Some((Token::Newline, _)) | None, None) => true,
            (Some((Token::Ident(w), _)), None) => w == "do",
            _ => false,
        };
        if close.is_some() {
            self.skip_newlines();
        }
        while !ends(self) {
            if let Some((Token::Key(key), _)) = self.peek().cloned() {
                self.next += 1;
                let value = self.value()?;
                call.keywords.push((key, value));
            } else {
                if !call.keywords.is_empty() {
                    return error(self.at(), "keyword options come after the other arguments");
                }
                let value = self.value()?;
                call.args.push(value);
            }
            match self.peek() {
                Some((Token::Comma, _)) => self.next += 1,
                _ if ends(self) => {}
                Some((_, at)) => return error(*at, "expected `,` between arguments"),
                None => return error(self.at(), "unexpected end of file"),
            }
        }
        if close.is_some() {
            self.next += 1;
        }
        Ok(())
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let Some((token, at)) = self.bump() else { return error(self.at(), "a value is missing") };
        let value = match token {
            Token::Str(s) => Value::Str(s),
            Token::Int(n) => Value::Int(n),
            Token::Atom(a) => Value::Atom(a),
            Token::Alias(a) => Value::Alias(a),
            Token::Ident(w) if w == "true" => Value::Bool(true),
            Token::Ident(w) if w == "false" => Value::Bool(false),
            Token::Ident(w) if w == "nil" => Value::Nil,
            Token::Ident(name) => Value::Call(Box::new(self.call(name, at, false)?)),
            Token::Open('[') => self.list()?,
            Token::Open('{') => Value::Tuple(self.sequence('}')?),
            Token::MapOpen => self.map()?,
            _ => return error(at, "expected a value: a string, a number, an atom, a list or a map"),
        };
        Ok(Node { value, at })
    }

    /// Values up to `close`.
    fn sequence(&mut self, close: char) -> Result<Vec<Node>, SyntaxError> {
        let mut items = Vec::new();
        loop {
            if matches!(self.peek(), Some((Token::Close(c), _)) if *c == close) {
                self.next += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            match self.bump() {
                Some((Token::Comma, _)) => {}
                Some((Token::Close(c), _)) if c == close => return Ok(items),
                Some((_, at)) => return error(at, format!("expected `,` or `{close}`")),
                None => return error(self.at(), format!("`{close}` is missing")),
            }
        }
    }

    /// `[a, b]` or `[key: value, ...]`, after `[`.
    fn list(&mut self) -> Result<Value, SyntaxError> {
        if matches!(self.peek(), Some((Token::Key(_), _))) {
            let mut pairs = Vec::new();
            loop {
                let Some((Token::Key(key), _)) = self.bump() else {
                    return error(self.at(), "a keyword list has only `key: value` pairs");
                };
                pairs.push((key, self.value()?));
                match self.bump() {
                    Some((Token::Comma, _)) => {}
                    Some((Token::Close(']'), _)) => return Ok(Value::Keywords(pairs)),
                    Some((_, at)) => return error(at, "expected `,` or `]`"),
                    None => return error(self.at(), "`]` is missing"),
                }
            }
        }
        Ok(Value::List(self.sequence(']')?))
    }

    /// `%{key => value, key: value}`, after `%{`.
    fn map(&mut self) -> Result<Value, SyntaxError> {
        let mut pairs = Vec::new();
        loop {
            match self.peek().cloned() {
                Some((Token::Close('}'), _)) => {
                    self.next += 1;
                    return Ok(Value::Map(pairs));
                }
                Some((Token::Key(key), at)) => {
                    self.next += 1;
                    pairs.push((Node { value: Value::Atom(key), at }, self.value()?));
                }
                _ => {
                    let key = self.value()?;
                    match self.bump() {
                        Some((Token::Arrow, _)) => {}
                        Some((_, at)) => return error(at, "expected `=>` in a map"),
                        None => return error(self.at(), "`}` is missing"),
                    }
                    pairs.push((key, self.value()?));
                }
            }
            match self.bump() {
                Some((Token::Comma, _)) => {}
                Some((Token::Close('}'), _)) => return Ok(Value::Map(pairs)),
                Some((_, at)) => return error(at, "expected `,` or `}`"),
                None => return error(self.at(), "`}` is missing"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(text: &str) -> Call {
        let mut calls = parse(text).unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        calls.remove(0)
    }

    fn values(call: &Call) -> Vec<Value> {
        call.args.iter().map(|n| n.value.clone()).collect()
    }

    #[test]
    fn calls_with_and_without_parentheses_read_the_same() {
        for text in ["http(port: 18080)\n", "http port: 18080\n", "http(\n  port: 18_080\n)\n", "http port:\n 18080"] {
            let call = only(text);
            assert_eq!(call.name, "http");
            assert_eq!(call.keywords.len(), 1, "{text}");
            assert_eq!(call.keywords[0].0, "port");
            assert_eq!(call.keywords[0].1.value, Value::Int(18080), "{text}");
        }
        let call = only("target(:main, \"http://127.0.0.1:4100\", active: true)");
        assert_eq!(values(&call), [Value::Atom("main".into()), Value::Str("http://127.0.0.1:4100".into())]);
        assert_eq!(call.keywords[0].1.value, Value::Bool(true));
    }

    #[test]
    fn keyword_arguments_continue_over_lines_after_a_comma() {
        let call = only("acme email: \"ops@example.org\",\n  directory_url: :lets_encrypt_staging,\n  cert_directory: \"/var/lib/c\"\n");
        let keys: Vec<&str> = call.keywords.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["email", "directory_url", "cert_directory"]);
        assert_eq!(call.keywords[1].1.value, Value::Atom("lets_encrypt_staging".into()));
    }

    #[test]
    fn blocks_values_and_comments() {
        let text = r#"
import Gatehouse.Config # the directives
service :blog do
  host "Blog.Example.ORG"
  target :blue, "http://127.0.0.1:4000", active: true, metadata: %{"zone" => "a", weight: 2}
  balance(:round_robin, [])
  drain :infinity
  tls mode: :auto
  acme provider: Gatehouse.ACME.Provider, sni: [cert_directory: "/etc/sni"], ip: {0, 0, 0, 0}
  note "tab\there \"quoted\" \\ \#{not interpolated}"
end
"#;
        let calls = parse(text).unwrap();
        assert_eq!(calls[0].name, "import");
        assert_eq!(values(&calls[0]), [Value::Alias("Gatehouse.Config".into())]);
        let block = calls[1].block.as_ref().unwrap();
        assert_eq!(
            block.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["host", "target", "balance", "drain", "tls", "acme", "note"]
        );
        let Value::Map(metadata) = &block[1].keywords[1].1.value else { panic!() };
        assert_eq!(metadata[1].0.value, Value::Atom("weight".into()));
        assert_eq!(values(&block[2]), [Value::Atom("round_robin".into()), Value::List(vec![])]);
        assert!(matches!(&block[5].keywords[1].1.value, Value::Keywords(k) if k[0].0 == "cert_directory"));
        assert!(matches!(&block[5].keywords[2].1.value, Value::Tuple(t) if t.len() == 4));
        assert_eq!(values(&block[6]), [Value::Str("tab\there \"quoted\" \\ #{not interpolated}".into())]);
    }

    #[test]
    fn code_is_refused_where_it_stands() {
        for (text, says, at) in [
            ("defmodule X do\nend\n", "`defmodule` is not supported", 0),
            ("host \"a#{b}\"\n", "interpolation", 7),
            ("http port: 80 + 1\n", "operators", 14),
            ("x = 1\n", "operators", 2),
            ("drain 1.5\n", "whole numbers", 6),
            ("service :a do\nhost \"a\"\n", "without its `end`", 23),
            ("end\n", "without a `do`", 0),
            ("host \"a\" \"b\"\n", "expected `,`", 9),
            ("http port: 80, :x\n", "keyword options come after", 15),
            ("@attr 1\n", "module attributes", 0),
            ("host \"open\n", "not closed", 5),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message.contains(says), "{text:?}: {err:?}");
            assert_eq!(err.span.start, at, "{text:?}: {err:?}");
        }
    }
}
