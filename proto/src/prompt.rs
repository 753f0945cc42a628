//! The template language of prompt APIs (`PromptSpec`): text with
//! `{{name}}` placeholders, nothing more (no logic, no escapes, no access
//! to anything but the request's declared variables). Shared by `apply`,
//! which checks that a template names only declared variables, and the
//! node, which fills it in.

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Variable(&'a str),
}

/// The template's pieces, or why it is not one: a `{{` without `}}`, or a
/// placeholder that is not a variable name.
pub fn segments(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Segment::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| "a \"{{\" is not closed by \"}}\"".to_string())?;
        let name = after[..close].trim();
        if !is_variable_name(name) {
            return Err(format!("{{{{{name}}}}} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
        }
        out.push(Segment::Variable(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// `[A-Za-z_][A-Za-z0-9_]{0,63}`: also a JSON property and a tool argument name.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_split_the_text_and_bad_ones_are_refused() {
        assert_eq!(
            segments("Rate {{ text }}: {{n}}!").unwrap(),
            [
                Segment::Text("Rate "),
                Segment::Variable("text"),
                Segment::Text(": "),
                Segment::Variable("n"),
                Segment::Text("!")
            ]
        );
        assert_eq!(segments("plain").unwrap(), [Segment::Text("plain")]);
        assert!(segments("{{ text").is_err());
        assert!(segments("{{ a.b }}").is_err());
        assert!(segments("{{}}").is_err());
        assert!(segments("{{ 1a }}").is_err());
    }
}
