//! The lexer: source text to tokens, on demand, so the first error
//! reported is the first one in the text.

use super::ast::{CmpOp, UNITS};
use super::ExprError;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Field,
    Keyword(Keyword),
    Str(String),
    Int(i64),
    Float(f64),
    /// A signed duration in microseconds (`7d`, `-1h30m`).
    Duration(i64),
    Plus,
    /// A `-` not followed by a digit (`now() - 1h`).
    Minus,
    Cmp(CmpOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    AndAnd,
    OrOr,
    Bang,
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keyword {
    And,
    Or,
    Not,
    In,
    Contains,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    pub(super) fn from_word(word: &str) -> Option<Keyword> {
        const KEYWORDS: [(&str, Keyword); 9] = [
            ("and", Keyword::And),
            ("or", Keyword::Or),
            ("not", Keyword::Not),
            ("in", Keyword::In),
            ("contains", Keyword::Contains),
            ("is", Keyword::Is),
            ("null", Keyword::Null),
            ("true", Keyword::True),
            ("false", Keyword::False),
        ];
        KEYWORDS
            .iter()
            .find(|(text, _)| word.eq_ignore_ascii_case(text))
            .map(|(_, keyword)| *keyword)
    }
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) kind: Tok,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// Turns source text into tokens on demand, so the first error reported is
/// the first one in the text.
pub(super) struct Lexer<'s> {
    pub(super) src: &'s str,
    pub(super) pos: usize,
}

pub(super) fn is_field_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

pub(super) fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'s> Lexer<'s> {
    pub(super) fn new(src: &'s str) -> Lexer<'s> {
        Lexer { src, pos: 0 }
    }

    pub(super) fn error(&self, offset: usize, message: impl Into<String>) -> ExprError {
        ExprError::new(self.src, offset, message)
    }

    pub(super) fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or("")
    }

    pub(super) fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub(super) fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    pub(super) fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    pub(super) fn eat(&mut self, expected: char) -> bool {
        if self.peek_char() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    pub(super) fn next_token(&mut self) -> Result<Token, ExprError> {
        while self.peek_char().is_some_and(char::is_whitespace) {
            self.bump();
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: Tok::Eof,
                start,
                end: start,
            });
        };
        let kind = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '+' => Tok::Plus,
            '=' => {
                if self.eat('=') {
                    if self.eat('=') {
                        return Err(self.unknown_operator(start, "`==`"));
                    }
                    Tok::Cmp(CmpOp::Eq)
                } else if self.eat('<') {
                    return Err(self.unknown_operator(start, "`<=`"));
                } else if self.eat('>') {
                    return Err(self.unknown_operator(start, "`>=`"));
                } else {
                    return Err(self.unknown_operator(start, "`==`"));
                }
            }
            '!' => {
                if self.eat('=') {
                    if self.eat('=') {
                        return Err(self.unknown_operator(start, "`!=`"));
                    }
                    Tok::Cmp(CmpOp::Ne)
                } else {
                    Tok::Bang
                }
            }
            '<' => {
                if self.eat('=') {
                    Tok::Cmp(CmpOp::Le)
                } else if self.eat('>') {
                    return Err(self.unknown_operator(start, "`!=`"));
                } else {
                    Tok::Cmp(CmpOp::Lt)
                }
            }
            '>' => {
                if self.eat('=') {
                    Tok::Cmp(CmpOp::Ge)
                } else {
                    Tok::Cmp(CmpOp::Gt)
                }
            }
            '&' => {
                if self.eat('&') {
                    Tok::AndAnd
                } else {
                    return Err(self.unknown_operator(start, "`&&` or `and`"));
                }
            }
            '|' => {
                if self.eat('|') {
                    Tok::OrOr
                } else {
                    return Err(self.unknown_operator(start, "`||` or `or`"));
                }
            }
            '\'' | '"' => self.string(start, c)?,
            '-' | '0'..='9' => self.number(start)?,
            c if is_field_start(c) => {
                while self.peek_char().is_some_and(is_field_char) {
                    self.bump();
                }
                // `_meta.lastSeen`: the one dotted name.
                if &self.src[start..self.pos] == "_meta" && self.peek_char() == Some('.') {
                    self.bump();
                    while self.peek_char().is_some_and(is_field_char) {
                        self.bump();
                    }
                }
                match Keyword::from_word(&self.src[start..self.pos]) {
                    Some(keyword) => Tok::Keyword(keyword),
                    None => Tok::Field,
                }
            }
            '.' if self.peek_char().is_some_and(|d| d.is_ascii_digit()) => {
                return Err(self.error(start, "a number needs a digit before the `.`, like 0.5"));
            }
            c => {
                return Err(self.error(
                    start,
                    format!("unexpected character `{}`", c.escape_debug()),
                ));
            }
        };
        Ok(Token {
            kind,
            start,
            end: self.pos,
        })
    }

    pub(super) fn unknown_operator(&self, start: usize, suggestion: &str) -> ExprError {
        let found = &self.src[start..self.pos];
        self.error(
            start,
            format!("unknown operator `{found}`; did you mean {suggestion}?"),
        )
    }

    /// A quoted string; the opening quote is already consumed.
    pub(super) fn string(&mut self, start: usize, quote: char) -> Result<Tok, ExprError> {
        let mut text = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.error(
                    start,
                    format!(
                        "unterminated string starting at column {}",
                        ExprError::new(self.src, start, "").column
                    ),
                ));
            };
            match c {
                c if c == quote => return Ok(Tok::Str(text)),
                '\\' => {
                    let escape_at = self.pos - 1;
                    match self.bump() {
                        Some('\\') => text.push('\\'),
                        Some('\'') => text.push('\''),
                        Some('"') => text.push('"'),
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('r') => text.push('\r'),
                        // End of input: reported as unterminated on the next turn.
                        None => {}
                        Some(other) => {
                            return Err(self.error(
                                escape_at,
                                format!(
                                    "unknown escape `\\{}` in string; use \\\\, \\', \\\", \\n, \\t or \\r",
                                    other.escape_debug()
                                ),
                            ));
                        }
                    }
                }
                c => text.push(c),
            }
        }
    }

    /// A number; its first character (`-` or a digit) is already consumed.
    pub(super) fn number(&mut self, start: usize) -> Result<Tok, ExprError> {
        let digits = |lexer: &mut Lexer<'_>| {
            let from = lexer.pos;
            while lexer.peek_char().is_some_and(|c| c.is_ascii_digit()) {
                lexer.bump();
            }
            lexer.pos > from
        };
        if self.src.as_bytes().get(start) == Some(&b'-') && !digits(self) {
            // The parser decides whether a lone `-` is allowed here.
            return Ok(Tok::Minus);
        }
        digits(self);
        let mut is_float = false;
        if self.peek_char() == Some('.') {
            self.bump();
            is_float = true;
            if !digits(self) {
                return Err(self.error(
                    start,
                    format!(
                        "expected a digit after the `.` in number `{}`",
                        &self.src[start..self.pos]
                    ),
                ));
            }
        }
        if matches!(self.peek_char(), Some('e' | 'E'))
            && (self
                .peek_second()
                .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-'))
        {
            self.bump();
            is_float = true;
            if !self.eat('+') {
                self.eat('-');
            }
            if !digits(self) {
                return Err(self.error(
                    start,
                    format!(
                        "expected digits in the exponent of number `{}`",
                        &self.src[start..self.pos]
                    ),
                ));
            }
        }
        if !is_float && self.peek_char().is_some_and(|c| c.is_ascii_alphabetic()) {
            while self.peek_char().is_some_and(is_field_char) {
                self.bump();
            }
            let text = &self.src[start..self.pos];
            return lex_duration(text)
                .map(Tok::Duration)
                .map_err(|why| self.error(start, format!("invalid number `{text}`; {why}")));
        }
        if self
            .peek_char()
            .is_some_and(|c| is_field_char(c) || c == '.')
        {
            while self
                .peek_char()
                .is_some_and(|c| is_field_char(c) || c == '.')
            {
                self.bump();
            }
            return Err(self.error(
                start,
                format!("invalid number `{}`", &self.src[start..self.pos]),
            ));
        }
        let text = &self.src[start..self.pos];
        if is_float {
            match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
                _ => Err(self.error(start, format!("number `{text}` is out of range"))),
            }
        } else {
            text.parse::<i64>().map(Tok::Int).map_err(|_| {
                self.error(
                    start,
                    format!(
                        "integer `{text}` is out of range (from {} to {})",
                        i64::MIN,
                        i64::MAX
                    ),
                )
            })
        }
    }
}

/// A duration token's text (`7d`, `-1h30m`) as signed microseconds, or
/// why it is not one.
pub(super) fn lex_duration(text: &str) -> Result<i64, String> {
    pub(super) const HINT: &str =
        "a duration is a number with a unit: ms, s, m, h, d or w (e.g. 7d, 1h30m)";
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + letters]);
        let size = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, size)| *size);
        let (Ok(number), Some(size)) = (number.parse::<i64>(), size) else {
            return Err(HINT.to_string());
        };
        total = i64::try_from(size)
            .ok()
            .and_then(|size| number.checked_mul(size))
            .and_then(|micros| total.checked_add(micros))
            .ok_or_else(|| "the duration is out of range".to_string())?;
        rest = &rest[digits + letters..];
    }
    Ok(if negative { -total } else { total })
}
