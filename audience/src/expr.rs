//! Set expressions over packs: `(a | b) & c - d`.
//!
//! Operators, loosest first (as in Python's sets): `|` union, `^` symmetric difference, `&`
//! intersection, `-` difference; `∪ ∩ −` are accepted for `| & -`. Parentheses group. Names
//! are pack names (letters, digits and `_`, starting with a letter).

use std::collections::BTreeSet;

use roaring::RoaringBitmap;

use crate::error::{Error, Result};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetExpr {
    Pack(String),
    Union(Box<SetExpr>, Box<SetExpr>),
    Xor(Box<SetExpr>, Box<SetExpr>),
    Intersect(Box<SetExpr>, Box<SetExpr>),
    Minus(Box<SetExpr>, Box<SetExpr>),
}

/// Deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Op(char),
    Open,
    Close,
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let column = text[..at].chars().count() + 1;
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push((column, Token::Open)),
            ')' => out.push((column, Token::Close)),
            '|' | '∪' => out.push((column, Token::Op('|'))),
            '&' | '∩' => out.push((column, Token::Op('&'))),
            '-' | '−' => out.push((column, Token::Op('-'))),
            '^' => out.push((column, Token::Op('^'))),
            c if c.is_alphanumeric() || c == '_' => {
                let mut name = String::new();
                while i < chars.len() && (chars[i].1.is_alphanumeric() || chars[i].1 == '_') {
                    name.push(chars[i].1);
                    i += 1;
                }
                out.push((column, Token::Name(name)));
                continue;
            }
            other => {
                return Err(Error::invalid(
                    "expr",
                    format!(
                        "unexpected '{other}' at column {column} (use pack names, | & - ^ and parentheses)"
                    ),
                ));
            }
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(c, _)| *c)
    }

    fn error(&self, message: &str) -> Error {
        Error::invalid("expr", format!("{message} at column {}", self.column()))
    }

    /// Binary operators by level, loosest first.
    const LEVELS: [char; 4] = ['|', '^', '&', '-'];

    fn level(&mut self, level: usize, depth: usize) -> Result<SetExpr> {
        if level == Self::LEVELS.len() {
            return self.atom(depth);
        }
        let mut left = self.level(level + 1, depth)?;
        while let Some(Token::Op(op)) = self.peek() {
            if *op != Self::LEVELS[level] {
                break;
            }
            let op = *op;
            self.at += 1;
            let right = self.level(level + 1, depth)?;
            let (l, r) = (Box::new(left), Box::new(right));
            left = match op {
                '|' => SetExpr::Union(l, r),
                '^' => SetExpr::Xor(l, r),
                '&' => SetExpr::Intersect(l, r),
                _ => SetExpr::Minus(l, r),
            };
        }
        Ok(left)
    }

    fn atom(&mut self, depth: usize) -> Result<SetExpr> {
        match self.peek().cloned() {
            Some(Token::Name(name)) => {
                self.at += 1;
                Ok(SetExpr::Pack(name))
            }
            Some(Token::Open) => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(&format!("more than {MAX_DEPTH} nested parentheses")));
                }
                self.at += 1;
                let inner = self.level(0, depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("expected ')'"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Close) => Err(self.error("unexpected ')'")),
            Some(Token::Op(op)) => Err(self.error(&format!("expected a pack name before '{op}'"))),
            None => Err(self.error("expected a pack name")),
        }
    }
}

impl SetExpr {
    /// Parses `text`; errors name the column.
    pub fn parse(text: &str) -> Result<SetExpr> {
        let tokens = tokens(text)?;
        if tokens.is_empty() {
            return Err(Error::invalid("expr", "empty expression"));
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            end: text.chars().count() + 1,
        };
        let expr = parser.level(0, 0)?;
        if parser.at < parser.tokens.len() {
            return Err(parser.error(match parser.peek() {
                Some(Token::Close) => "unbalanced ')'",
                _ => "expected an operator (| & - ^)",
            }));
        }
        Ok(expr)
    }

    /// Every pack the expression names.
    pub fn names(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut BTreeSet<String>) {
        match self {
            SetExpr::Pack(name) => {
                out.insert(name.clone());
            }
            SetExpr::Union(a, b)
            | SetExpr::Xor(a, b)
            | SetExpr::Intersect(a, b)
            | SetExpr::Minus(a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }

    /// The members, with each pack's members from `pack`.
    pub fn evaluate(&self, pack: &dyn Fn(&str) -> Result<RoaringBitmap>) -> Result<RoaringBitmap> {
        Ok(match self {
            SetExpr::Pack(name) => pack(name)?,
            SetExpr::Union(a, b) => a.evaluate(pack)? | b.evaluate(pack)?,
            SetExpr::Xor(a, b) => a.evaluate(pack)? ^ b.evaluate(pack)?,
            SetExpr::Intersect(a, b) => a.evaluate(pack)? & b.evaluate(pack)?,
            SetExpr::Minus(a, b) => a.evaluate(pack)? - b.evaluate(pack)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Box<SetExpr> {
        Box::new(SetExpr::Pack(name.into()))
    }

    #[test]
    fn precedence_follows_python_sets() {
        // (a | b) & c - d  ==  (a | b) & (c - d)
        assert_eq!(
            SetExpr::parse("(a | b) & c - d").expect("parses"),
            SetExpr::Intersect(
                Box::new(SetExpr::Union(p("a"), p("b"))),
                Box::new(SetExpr::Minus(p("c"), p("d")))
            )
        );
        // a | b & c  ==  a | (b & c); left to right within a level.
        assert_eq!(
            SetExpr::parse("a | b & c").expect("parses"),
            SetExpr::Union(p("a"), Box::new(SetExpr::Intersect(p("b"), p("c"))))
        );
        assert_eq!(
            SetExpr::parse("a - b - c").expect("parses"),
            SetExpr::Minus(Box::new(SetExpr::Minus(p("a"), p("b"))), p("c"))
        );
        assert_eq!(
            SetExpr::parse("高价值 ∪ vip_2026 ∩ b").expect("parses"),
            SetExpr::Union(
                p("高价值"),
                Box::new(SetExpr::Intersect(p("vip_2026"), p("b")))
            )
        );
    }

    #[test]
    fn evaluation_matches_hand_computed_sets() {
        let sets = |name: &str| -> Result<RoaringBitmap> {
            Ok(match name {
                "a" => [1, 2, 3].into_iter().collect(),
                "b" => [3, 4].into_iter().collect(),
                "c" => [2, 3, 4, 5].into_iter().collect(),
                "d" => [4].into_iter().collect(),
                other => return Err(Error::NotFound(other.into())),
            })
        };
        let eval = |text: &str| -> Vec<u32> {
            SetExpr::parse(text)
                .expect("parses")
                .evaluate(&sets)
                .expect("evaluates")
                .iter()
                .collect()
        };
        assert_eq!(eval("(a | b) & c - d"), vec![2, 3]);
        assert_eq!(eval("a ^ b"), vec![1, 2, 4]);
        assert_eq!(eval("a - (b | c)"), vec![1]);
        assert!(
            SetExpr::parse("a | zz")
                .expect("parses")
                .evaluate(&sets)
                .is_err()
        );
    }

    #[test]
    fn mistakes_name_the_column() {
        for (text, column) in [
            ("a |", "column 4"),
            ("(a | b", "column 7"),
            ("a b", "column 3"),
            ("a | b)", "column 6"),
            ("| a", "column 1"),
            ("a + b", "column 3"),
        ] {
            let error = SetExpr::parse(text).expect_err(text).to_string();
            assert!(error.contains(column), "{text}: {error}");
            assert!(error.starts_with("expr:"), "{error}");
        }
        assert!(SetExpr::parse("  ").is_err());
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(
            SetExpr::parse(&deep)
                .expect_err("too deep")
                .to_string()
                .contains("nested")
        );
    }
}
