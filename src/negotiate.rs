//! Content negotiation (SPEC §5, RFC 9110 §12.5.1): which of a function's media types a
//! message's `Content-Type` selects, and which one to produce for an `Accept` header.
//!
//! Pure: no I/O, no allocation beyond the result and error texts, and no panic on any input
//! (property-tested below). Media types are parsed with the `mediatype` crate.

use std::fmt;

use mediatype::MediaType;

/// Why a media type could not be agreed on. The text is what the caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// The input's Content-Type is not one the function accepts.
    UnsupportedMediaType {
        /// The Content-Type as received.
        content_type: String,
        /// What the function accepts.
        offered: Vec<String>,
    },
    /// No media type the function produces is acceptable.
    NotAcceptable {
        /// The Accept header as received.
        accept: String,
        /// What the function produces.
        offered: Vec<String>,
    },
}

fn list(offered: &[String], none: &str) -> String {
    if offered.is_empty() {
        none.to_owned()
    } else {
        offered.join(", ")
    }
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::UnsupportedMediaType {
                content_type,
                offered,
            } => write!(
                f,
                "Invoker: Unsupported Media Type: '{content_type}'; this function accepts {}",
                list(offered, "no input")
            ),
            NegotiationError::NotAcceptable { accept, offered } => write!(
                f,
                "Invoker: Not Acceptable: '{accept}'; this function produces {}",
                list(offered, "no output")
            ),
        }
    }
}

impl std::error::Error for NegotiationError {}

/// The output media type chosen for an Accept header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chosen {
    /// Index into the offered media types.
    pub index: usize,
    /// The parameters (other than `q` and what follows it) of the Accept range that chose it,
    /// each `; name=value`, in order; empty (and not allocated) when there are none, as in
    /// the common case.
    pub params: String,
}

impl Chosen {
    /// The Content-Type to send: the offered type plus the kept parameters.
    pub fn content_type<S: AsRef<str>>(&self, offered: &[S]) -> String {
        let essence = offered.get(self.index).map_or("", AsRef::as_ref);
        let mut content_type = String::with_capacity(essence.len() + self.params.len());
        content_type.push_str(essence);
        content_type.push_str(&self.params);
        content_type
    }
}

fn owned<S: AsRef<str>>(offered: &[S]) -> Vec<String> {
    offered.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// `type/subtype[+suffix]`, lowercased.
fn essence(mt: &MediaType<'_>) -> String {
    let mut s = format!("{}/{}", mt.ty.as_str(), mt.subty.as_str());
    if let Some(suffix) = &mt.suffix {
        s.push('+');
        s.push_str(suffix.as_str());
    }
    s.to_ascii_lowercase()
}

/// Whether a media type's `charset`, if any, is UTF-8 (the only one the invoker speaks).
fn charset_ok(mt: &MediaType<'_>) -> bool {
    mt.params.iter().all(|(name, value)| {
        !name.as_str().eq_ignore_ascii_case("charset")
            || value.unquoted_str().eq_ignore_ascii_case("utf-8")
    })
}

/// Which of `offered` (media type essences, lowercase) a message's Content-Type selects.
/// A missing or blank Content-Type means `default`.
pub fn content_type<S: AsRef<str>>(
    content_type: Option<&str>,
    default: &str,
    offered: &[S],
) -> Result<usize, NegotiationError> {
    let given = content_type
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default);
    // The common case, a bare type exactly as offered, needs no parsing.
    if let Some(index) = offered
        .iter()
        .position(|o| o.as_ref().eq_ignore_ascii_case(given))
    {
        return Ok(index);
    }
    let unsupported = || NegotiationError::UnsupportedMediaType {
        content_type: given.to_owned(),
        offered: owned(offered),
    };
    let mt = MediaType::parse(given).map_err(|_| unsupported())?;
    if !charset_ok(&mt) {
        return Err(unsupported());
    }
    let essence = essence(&mt);
    offered
        .iter()
        .position(|o| o.as_ref().eq_ignore_ascii_case(&essence))
        .ok_or_else(unsupported)
}

/// One media range of an Accept header.
struct Range<'a> {
    ty: String,
    subty: String,
    /// Parameters before `q`, as written.
    params: Vec<&'a str>,
    /// Weight in thousandths (0–1000).
    q: u16,
}

impl Range<'_> {
    /// How specifically this range matches `essence` (higher is more specific), or None.
    fn specificity(&self, essence: &str) -> Option<u8> {
        let (ty, subty) = essence.split_once('/')?;
        match (self.ty.as_str(), self.subty.as_str()) {
            ("*", "*") => Some(1),
            (t, "*") if t == ty => Some(2),
            (t, s) if t == ty && s == subty => Some(if self.params.is_empty() { 3 } else { 4 }),
            _ => None,
        }
    }
}

/// Splits on `sep` outside double-quoted strings (honouring backslash escapes in them).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Parses a weight: `0`, `1`, or up to three decimals (RFC 9110 §12.4.2), in thousandths.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// Parses one media range; None when it is malformed (it is then ignored).
fn parse_range(raw: &str) -> Option<Range<'_>> {
    let mut pieces = split_unquoted(raw, ';').into_iter().map(str::trim);
    let media = pieces.next()?;
    let (ty, subty) = media.split_once('/')?;
    let (ty, subty) = (
        ty.trim().to_ascii_lowercase(),
        subty.trim().to_ascii_lowercase(),
    );
    if ty == "*" && subty != "*" {
        return None;
    }
    let mut params = Vec::new();
    let mut q = 1000;
    for piece in pieces.by_ref() {
        if piece.is_empty() {
            continue;
        }
        let (name, value) = piece.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("q") {
            q = parse_q(value.trim())?;
            // What follows q are accept-extensions: not part of the media range.
            break;
        }
        params.push(piece);
    }
    // Validate the range (wildcards included) with the media type parser.
    let check = if params.is_empty() {
        media.to_owned()
    } else {
        format!("{media}; {}", params.join("; "))
    };
    let mt = MediaType::parse(&check).ok()?;
    if !charset_ok(&mt) {
        return None;
    }
    Some(Range {
        ty,
        subty,
        params,
        q,
    })
}

/// Which of `offered` (media type essences, in the function's preference order) to produce for
/// an Accept header. A missing or blank Accept means the function's preferred type.
pub fn accept<S: AsRef<str>>(
    accept: Option<&str>,
    offered: &[S],
) -> Result<Chosen, NegotiationError> {
    let header = accept.map(str::trim).filter(|s| !s.is_empty());
    let not_acceptable = || NegotiationError::NotAcceptable {
        accept: header.unwrap_or_default().to_owned(),
        offered: owned(offered),
    };
    let Some(header) = header else {
        offered.first().ok_or_else(not_acceptable)?;
        return Ok(Chosen::default());
    };
    let ranges: Vec<Range<'_>> = split_unquoted(header, ',')
        .into_iter()
        .filter_map(|raw| parse_range(raw.trim()))
        .collect();
    // For each offered type: the quality of its most specific matching range.
    let mut best: Option<(u16, u8, usize, &Range<'_>)> = None;
    for (index, offer) in offered.iter().enumerate() {
        let essence = offer.as_ref().to_ascii_lowercase();
        let Some((specificity, range)) = ranges
            .iter()
            .filter_map(|r| r.specificity(&essence).map(|s| (s, r)))
            .max_by_key(|(s, _)| *s)
        else {
            continue;
        };
        if range.q == 0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((q, s, _, _)) => (range.q, specificity) > (q, s),
        };
        if better {
            best = Some((range.q, specificity, index, range));
        }
    }
    let (_, _, index, range) = best.ok_or_else(not_acceptable)?;
    let mut params = String::new();
    for param in &range.params {
        params.push_str("; ");
        params.push_str(param);
    }
    Ok(Chosen { index, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NUMBER: [&str; 2] = ["text/plain", "application/json"];

    fn chosen(accept_header: &str, offered: &[&str]) -> String {
        accept(Some(accept_header), offered)
            .unwrap()
            .content_type(offered)
    }

    #[test]
    fn content_type_default_and_charset() {
        assert_eq!(content_type(None, "text/plain", &NUMBER), Ok(0));
        assert_eq!(content_type(Some("  "), "application/json", &NUMBER), Ok(1));
        assert_eq!(
            content_type(Some("text/plain; charset=utf-8"), "x/y", &NUMBER),
            Ok(0)
        );
        assert_eq!(
            content_type(Some("TEXT/PLAIN;Charset=\"UTF-8\""), "x/y", &NUMBER),
            Ok(0)
        );
        assert_eq!(
            content_type(Some("application/json; foo=bar"), "x/y", &NUMBER),
            Ok(1)
        );
        assert!(content_type(Some("text/plain; charset=iso-8859-1"), "x/y", &NUMBER).is_err());
        assert!(content_type(Some("not a type"), "x/y", &NUMBER).is_err());
        assert_eq!(
            content_type(
                Some("application/cloudevents+json"),
                "x/y",
                &["application/cloudevents+json"]
            ),
            Ok(0)
        );
    }

    #[test]
    fn unsupported_message() {
        let e = content_type(Some("image/png"), "text/plain", &NUMBER).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invoker: Unsupported Media Type: 'image/png'; this function accepts text/plain, application/json"
        );
        let e = content_type::<&str>(Some("image/png"), "text/plain", &[]).unwrap_err();
        assert!(e.to_string().ends_with("accepts no input"));
    }

    #[test]
    fn accept_rules() {
        // Missing: preferred.
        assert_eq!(
            accept(None, &NUMBER).unwrap(),
            Chosen {
                index: 0,
                params: String::new()
            }
        );
        assert_eq!(accept(Some(" "), &NUMBER).unwrap().index, 0);
        // Exact, wildcards, specificity.
        assert_eq!(chosen("application/json", &NUMBER), "application/json");
        assert_eq!(chosen("text/*", &NUMBER), "text/plain");
        assert_eq!(chosen("application/*", &NUMBER), "application/json");
        assert_eq!(chosen("*/*", &NUMBER), "text/plain");
        assert_eq!(chosen("*/*, application/json", &NUMBER), "application/json");
        // q-values.
        assert_eq!(
            chosen("text/plain;q=0.5, application/json", &NUMBER),
            "application/json"
        );
        assert_eq!(
            chosen("text/plain;q=0.9, application/json;q=0.8", &NUMBER),
            "text/plain"
        );
        // q=0 excludes, even when a less specific range allows it.
        assert_eq!(chosen("*/*, text/plain;q=0", &NUMBER), "application/json");
        assert!(accept(Some("text/plain;q=0"), &NUMBER).is_err());
        // Parameters kept, accept-extensions dropped.
        assert_eq!(
            chosen("application/json; charset=utf-8", &NUMBER),
            "application/json; charset=utf-8"
        );
        assert_eq!(
            chosen("application/json;q=0.5;ext=1", &NUMBER),
            "application/json"
        );
        // A charset we cannot produce does not match.
        assert!(accept(Some("text/plain; charset=latin1"), &["text/plain"]).is_err());
        // A quoted comma does not split.
        assert_eq!(
            chosen("text/plain; x=\"a,b\", image/png", &NUMBER),
            "text/plain; x=\"a,b\""
        );
        // Invalid q: the range is ignored.
        assert_eq!(
            chosen("text/plain;q=2, application/json;q=0.1", &NUMBER),
            "application/json"
        );
        assert_eq!(chosen("text/plain;q=abc, */*;q=0.1", &NUMBER), "text/plain");
        // */subtype is invalid.
        assert!(accept(Some("*/json"), &NUMBER).is_err());
    }

    #[test]
    fn not_acceptable() {
        let e = accept(Some("image/png"), &NUMBER).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invoker: Not Acceptable: 'image/png'; this function produces text/plain, application/json"
        );
        assert!(accept(Some("garbage"), &NUMBER).is_err());
        assert!(accept::<&str>(None, &[]).is_err());
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q(""), None);
        assert_eq!(parse_q("-0"), None);
    }

    proptest! {
        #[test]
        fn accept_never_panics(header in ".*") {
            if let Ok(c) = accept(Some(&header), &NUMBER) {
                prop_assert!(c.index < NUMBER.len());
                prop_assert!(c.content_type(&NUMBER).starts_with(NUMBER[c.index]));
            }
        }

        #[test]
        fn accept_never_panics_on_header_like_input(header in "[a-z*/;=,\"\\\\ q.0-9+-]{0,40}") {
            if let Ok(c) = accept(Some(&header), &NUMBER) {
                prop_assert!(c.index < NUMBER.len());
                prop_assert!(c.content_type(&NUMBER).starts_with(NUMBER[c.index]));
            }
        }

        #[test]
        fn content_type_never_panics(header in ".*", header2 in "[a-z*/;=,\"\\\\ +.0-9-]{0,40}") {
            let _ = content_type(Some(&header), "text/plain", &NUMBER);
            if let Ok(i) = content_type(Some(&header2), "text/plain", &NUMBER) {
                prop_assert!(i < NUMBER.len());
            }
        }
    }
}
