//! The parser: recursive descent over the lexer's tokens into the tree,
//! with the source limits (length, depth, list length) enforced as it goes.

use super::ast::{At, LitValue, Literal, MetaField, Node, Predicate, Test};
use super::lex::{Keyword, Lexer, Tok, Token};
use super::{ExprError, MAX_DEPTH, MAX_LIST_LEN, MAX_SOURCE_BYTES};

/// The tree of `source`, or the first error in it.
pub(super) fn parse_root(source: &str) -> Result<Node, ExprError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ExprError::new(
            source,
            0,
            format!(
                "expression is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    let mut parser = Parser {
        lexer: Lexer::new(source),
        peeked: None,
        depth: 0,
    };
    let first = parser.next()?;
    if first.kind == Tok::Eof {
        return Err(parser.error(first.start, "expression is empty"));
    }
    parser.push_back(first);
    let root = parser.parse_or()?;
    let end = parser.next()?;
    match end.kind {
        Tok::Eof => Ok(root),
        Tok::RParen => Err(parser.error(end.start, "found `)` with no matching `(`")),
        _ => Err(parser.error(
            end.start,
            format!(
                "expected `and`, `or` or end of input, found {}",
                parser.describe(&end)
            ),
        )),
    }
}

/// Recursive descent with one token of lookahead. Recursion happens only
/// through `(` and `not`, and `depth` bounds both.
pub(super) struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token>,
    depth: usize,
}

impl<'s> Parser<'s> {
    pub(super) fn error(&self, offset: usize, message: impl Into<String>) -> ExprError {
        self.lexer.error(offset, message)
    }

    pub(super) fn next(&mut self) -> Result<Token, ExprError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    pub(super) fn push_back(&mut self, token: Token) {
        self.peeked = Some(token);
    }

    /// Consumes the next token when `wanted` says so.
    pub(super) fn next_if(
        &mut self,
        wanted: impl Fn(&Tok) -> bool,
    ) -> Result<Option<Token>, ExprError> {
        let token = self.next()?;
        if wanted(&token.kind) {
            Ok(Some(token))
        } else {
            self.push_back(token);
            Ok(None)
        }
    }

    /// How a token reads in an error message: "end of input", "field `x`",
    /// "string 'x'", "number 3", "`)`".
    pub(super) fn describe(&self, token: &Token) -> String {
        let text = self.lexer.src.get(token.start..token.end).unwrap_or("");
        let shown: String = if text.chars().count() > 40 {
            text.chars().take(40).chain("…".chars()).collect()
        } else {
            text.to_string()
        };
        match token.kind {
            Tok::Eof => "end of input".to_string(),
            Tok::Field => format!("field `{shown}`"),
            Tok::Str(_) => format!("string {shown}"),
            Tok::Int(_) | Tok::Float(_) => format!("number {shown}"),
            Tok::Duration(_) => format!("duration {shown}"),
            _ => format!("`{shown}`"),
        }
    }

    pub(super) fn descend(&mut self, at: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(
                at,
                format!("expression nests deeper than {MAX_DEPTH} levels of `(` and `not`"),
            ));
        }
        Ok(())
    }

    pub(super) fn parse_or(&mut self) -> Result<Node, ExprError> {
        let mut children = vec![self.parse_and(None)?];
        while let Some(op) = self.next_if(|t| matches!(t, Tok::Keyword(Keyword::Or) | Tok::OrOr))? {
            let after = self.lexer.src[op.start..op.end].to_string();
            children.push(self.parse_and(Some(&after))?);
        }
        Ok(if children.len() == 1 {
            children.swap_remove(0)
        } else {
            Node::Or(children)
        })
    }

    pub(super) fn parse_and(&mut self, after: Option<&str>) -> Result<Node, ExprError> {
        let mut children = vec![self.parse_unary(after)?];
        while let Some(op) =
            self.next_if(|t| matches!(t, Tok::Keyword(Keyword::And) | Tok::AndAnd))?
        {
            let after = self.lexer.src[op.start..op.end].to_string();
            children.push(self.parse_unary(Some(&after))?);
        }
        Ok(if children.len() == 1 {
            children.swap_remove(0)
        } else {
            Node::And(children)
        })
    }

    /// `after` names the token before this operand, for error messages.
    pub(super) fn parse_unary(&mut self, after: Option<&str>) -> Result<Node, ExprError> {
        let token = self.next()?;
        match token.kind {
            Tok::Keyword(Keyword::Not) | Tok::Bang => {
                self.descend(token.start)?;
                let text = self.lexer.src[token.start..token.end].to_string();
                let inner = self.parse_unary(Some(&text))?;
                self.depth -= 1;
                Ok(Node::Not(Box::new(inner)))
            }
            Tok::LParen => {
                self.descend(token.start)?;
                let inner = self.parse_or_in_parens(token.start)?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Field => {
                let name = self.lexer.src[token.start..token.end].to_string();
                self.parse_predicate(name, token.start)
            }
            _ => {
                let after = after.map_or(String::new(), |a| format!(" after `{a}`"));
                Err(self.error(
                    token.start,
                    format!(
                        "expected a field name, `not` or `(`{after}, found {}",
                        self.describe(&token)
                    ),
                ))
            }
        }
    }

    pub(super) fn parse_or_in_parens(&mut self, open: usize) -> Result<Node, ExprError> {
        let token = self.next()?;
        if token.kind == Tok::RParen {
            return Err(self.error(token.start, "expected an expression inside `()`"));
        }
        self.push_back(token);
        let inner = self.parse_or()?;
        let close = self.next()?;
        if close.kind != Tok::RParen {
            let column = ExprError::new(self.lexer.src, open, "").column;
            return Err(self.error(
                close.start,
                format!(
                    "expected `)` to close the `(` at column {column}, found {}",
                    self.describe(&close)
                ),
            ));
        }
        Ok(inner)
    }

    pub(super) fn parse_predicate(&mut self, field: String, at: usize) -> Result<Node, ExprError> {
        let token = self.next()?;
        let test = match token.kind {
            Tok::Cmp(op) => {
                let literal = self.parse_literal(op.symbol())?;
                if !op.is_ordering() && matches!(literal.value, LitValue::Now { .. }) {
                    return Err(self.error(
                        literal.at.0,
                        format!(
                            "`{}` with a time relative to now() holds for at most one \
                             microsecond; use `<`, `<=`, `>` or `>=`",
                            op.symbol()
                        ),
                    ));
                }
                if op.is_ordering() && literal.value == LitValue::Null {
                    return Err(self.error(
                        literal.at.0,
                        format!(
                            "`{}` cannot compare with `null`; use `is null` or `is not null`",
                            op.symbol()
                        ),
                    ));
                }
                Test::Compare { op, literal }
            }
            Tok::Keyword(Keyword::In) => Test::In {
                negated: false,
                list: self.parse_list("in")?,
            },
            Tok::Keyword(Keyword::Not) => {
                let next = self.next()?;
                if next.kind != Tok::Keyword(Keyword::In) {
                    return Err(self.error(
                        next.start,
                        format!(
                            "expected `in` after `{field} not`, found {}",
                            self.describe(&next)
                        ),
                    ));
                }
                Test::In {
                    negated: true,
                    list: self.parse_list("not in")?,
                }
            }
            Tok::Keyword(Keyword::Contains) => {
                let needle = self.parse_literal("contains")?;
                self.refuse_time(&needle, "contains")?;
                if needle.value == LitValue::Null {
                    return Err(self.error(
                        needle.at.0,
                        "`contains` needs a value, not `null`; use `is null` to test for null",
                    ));
                }
                Test::Contains(needle)
            }
            Tok::Keyword(Keyword::Is) => {
                let negated = self
                    .next_if(|t| *t == Tok::Keyword(Keyword::Not))?
                    .is_some();
                let null = self.next()?;
                if null.kind != Tok::Keyword(Keyword::Null) {
                    return Err(self.error(
                        null.start,
                        format!(
                            "expected `null` after `{}`, found {}",
                            if negated { "is not" } else { "is" },
                            self.describe(&null)
                        ),
                    ));
                }
                Test::IsNull { negated }
            }
            Tok::LParen if field.eq_ignore_ascii_case("now") => {
                return Err(self.error(
                    at,
                    "now() goes on the right of a comparison, after a timestamp field: \
                     write `reported_at > now() - 7d`",
                ));
            }
            _ => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected an operator after field `{field}` (==, !=, <, <=, >, >=, in, \
                         not in, contains, is null), found {}",
                        self.describe(&token)
                    ),
                ));
            }
        };
        Ok(Node::Predicate(Predicate {
            meta: MetaField::of(&field),
            field,
            at: At(at),
            test,
        }))
    }

    pub(super) fn parse_literal(&mut self, after: &str) -> Result<Literal, ExprError> {
        let token = self.next()?;
        let value = match token.kind {
            Tok::Str(text) => LitValue::string(text),
            Tok::Int(i) => LitValue::Int(i),
            Tok::Float(x) => LitValue::Float(x),
            Tok::Keyword(Keyword::True) => LitValue::Bool(true),
            Tok::Keyword(Keyword::False) => LitValue::Bool(false),
            Tok::Keyword(Keyword::Null) => LitValue::Null,
            Tok::Field
                if self.lexer.src[token.start..token.end].eq_ignore_ascii_case("now")
                    && self.next_if(|t| *t == Tok::LParen)?.is_some() =>
            {
                self.parse_now(token.start)?
            }
            Tok::Minus => {
                return Err(self.error(token.start, "expected a digit after `-`"));
            }
            Tok::Duration(_) => {
                let text = &self.lexer.src[token.start..token.end];
                return Err(self.error(
                    token.start,
                    format!(
                        "a duration needs a time to count from: write `now() - {}`",
                        text.trim_start_matches('-')
                    ),
                ));
            }
            Tok::Field => {
                let name = &self.lexer.src[token.start..token.end];
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found field `{name}`; fields can only \
                         be compared with values (to compare with the text, quote it: '{name}')"
                    ),
                ));
            }
            _ => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found {}",
                        self.describe(&token)
                    ),
                ));
            }
        };
        Ok(Literal {
            value,
            at: At(token.start),
        })
    }

    /// The rest of `now() ± duration…`; `now(` is already consumed.
    pub(super) fn parse_now(&mut self, start: usize) -> Result<LitValue, ExprError> {
        let close = self.next()?;
        if close.kind != Tok::RParen {
            return Err(self.error(
                close.start,
                format!(
                    "expected `)` after `now(`: now() takes no arguments, found {}",
                    self.describe(&close)
                ),
            ));
        }
        let mut offset: i64 = 0;
        loop {
            let token = self.next()?;
            let step = match token.kind {
                Tok::Plus | Tok::Minus => {
                    let sign = if token.kind == Tok::Plus { "+" } else { "-" };
                    let amount = self.next()?;
                    match amount.kind {
                        Tok::Duration(d) if d >= 0 => {
                            if sign == "-" {
                                -d
                            } else {
                                d
                            }
                        }
                        _ => {
                            return Err(self.error(
                                amount.start,
                                format!(
                                    "expected a duration after `now() {sign}`, like 7d, 1h, \
                                     30m or 10s; found {}",
                                    self.describe(&amount)
                                ),
                            ));
                        }
                    }
                }
                // `now()-7d` lexes the sign into the duration.
                Tok::Duration(d) if d < 0 => d,
                Tok::Int(i) if i < 0 => {
                    return Err(self.error(
                        token.start,
                        format!(
                            "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; \
                             found {}",
                            self.describe(&token)
                        ),
                    ));
                }
                _ => {
                    self.push_back(token);
                    return Ok(LitValue::Now { offset });
                }
            };
            offset = offset
                .checked_add(step)
                .ok_or_else(|| self.error(start, "the offset from now() is out of range"))?;
        }
    }

    /// `now()` is compared with, never looked for in a list or a string.
    pub(super) fn refuse_time(&self, literal: &Literal, place: &str) -> Result<(), ExprError> {
        if matches!(literal.value, LitValue::Now { .. }) {
            return Err(self.error(
                literal.at.0,
                format!(
                    "a time relative to now() cannot be used in {place}; compare with `<`, \
                     `<=`, `>` or `>=`"
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn parse_list(&mut self, after: &str) -> Result<Vec<Literal>, ExprError> {
        let open = self.next()?;
        if open.kind != Tok::LBracket {
            return Err(self.error(
                open.start,
                format!(
                    "expected `[` after `{after}`, found {}",
                    self.describe(&open)
                ),
            ));
        }
        let mut list = Vec::new();
        if self.next_if(|t| *t == Tok::RBracket)?.is_some() {
            return Ok(list);
        }
        let mut separator = "[";
        loop {
            let literal = self.parse_literal(separator)?;
            self.refuse_time(&literal, "a list")?;
            if literal.value == LitValue::Null {
                return Err(self.error(
                    literal.at.0,
                    "a list cannot hold `null`; use `is null` to test for null",
                ));
            }
            if list.len() == MAX_LIST_LEN {
                return Err(self.error(
                    literal.at.0,
                    format!("list has more than {MAX_LIST_LEN} values"),
                ));
            }
            list.push(literal);
            let token = self.next()?;
            match token.kind {
                Tok::Comma => separator = ",",
                Tok::RBracket => return Ok(list),
                _ => {
                    let column = ExprError::new(self.lexer.src, open.start, "").column;
                    return Err(self.error(
                        token.start,
                        format!(
                            "expected `,` or `]` in the list opened at column {column}, found {}",
                            self.describe(&token)
                        ),
                    ));
                }
            }
        }
    }
}
