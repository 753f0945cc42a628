//! Request templates with per-request variables: `{{seq}}`, `{{worker}}`, `{{uuid}}`,
//! `{{random:LO-HI}}` and `{{key}}` (the API key assigned from the key pool).

use std::fmt::Write;

use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("unclosed `{{{{` in template; close it with `}}}}`")]
    Unclosed,
    #[error("unknown template variable `{0}`; use seq, worker, uuid, key or random:LO-HI")]
    Unknown(String),
    #[error("bad range in `{0}`; write random:LO-HI with LO <= HI, e.g. random:1-100")]
    BadRange(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Seq,
    Worker,
    Uuid,
    Key,
    Random(u64, u64),
}

/// Values that vary per request.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub seq: u64,
    pub worker: usize,
    pub key: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
            let name = after[..end].trim();
            parts.push(match name {
                "seq" => Part::Seq,
                "worker" => Part::Worker,
                "uuid" => Part::Uuid,
                "key" => Part::Key,
                _ => match name.strip_prefix("random:") {
                    Some(range) => {
                        let bad = || TemplateError::BadRange(name.to_string());
                        let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
                        let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
                        let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
                        if lo > hi {
                            return Err(bad());
                        }
                        Part::Random(lo, hi)
                    }
                    None => return Err(TemplateError::Unknown(name.to_string())),
                },
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The text when the template has no variables, so callers can build it once.
    pub fn as_static(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                _ => return None,
            }
        }
        Some(out)
    }

    pub fn uses_key(&self) -> bool {
        self.parts.contains(&Part::Key)
    }

    pub fn render(&self, vars: &Vars<'_>, rng: &mut impl Rng, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Seq => {
                    let _ = write!(out, "{}", vars.seq);
                }
                Part::Worker => {
                    let _ = write!(out, "{}", vars.worker);
                }
                Part::Key => out.push_str(vars.key),
                Part::Random(lo, hi) => {
                    let _ = write!(out, "{}", rng.random_range(*lo..=*hi));
                }
                Part::Uuid => {
                    let mut b: [u8; 16] = rng.random();
                    b[6] = (b[6] & 0x0f) | 0x40;
                    b[8] = (b[8] & 0x3f) | 0x80;
                    for (i, byte) in b.iter().enumerate() {
                        if matches!(i, 4 | 6 | 8 | 10) {
                            out.push('-');
                        }
                        let _ = write!(out, "{byte:02x}");
                    }
                }
            }
        }
    }

    pub fn render_string(&self, vars: &Vars<'_>, rng: &mut impl Rng) -> String {
        let mut s = String::new();
        self.render(vars, rng, &mut s);
        s
    }
}
