//! `FUNCTION_URI`: `file:///abs/path/libname.so?handler=name`, or a bare path. Pure parsing.
//! `handler` may be given once; a `#fragment` is refused (a `#` in a file name is `%23`).

use std::path::PathBuf;

/// Where the function is: the library's path and, optionally, the handler to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionUri {
    /// Path of the shared library.
    pub path: PathBuf,
    /// The handler (function name) to run; needed when the library exports several.
    pub handler: Option<String>,
}

/// Why a `FUNCTION_URI` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Nothing was given.
    #[error("FUNCTION_URI is empty: give file:///path/to/libname.so?handler=name or a path")]
    Empty,
    /// A scheme other than `file`.
    #[error(
        "FUNCTION_URI '{uri}' has scheme '{scheme}'; only file:// URIs and plain paths are supported"
    )]
    Scheme {
        /// The URI.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// `file://host/...` with a host.
    #[error("FUNCTION_URI '{uri}' names host '{host}'; a file URI must be local: file:///abs/path")]
    Host {
        /// The URI.
        uri: String,
        /// The host.
        host: String,
    },
    /// A query parameter other than `handler`, or a malformed one.
    #[error(
        "FUNCTION_URI '{uri}' has an unknown parameter '{param}'; only ?handler=name is supported"
    )]
    Param {
        /// The URI.
        uri: String,
        /// The parameter.
        param: String,
    },
    /// `handler=` given twice.
    #[error("FUNCTION_URI '{uri}' names the handler more than once; give ?handler=name once")]
    DuplicateHandler {
        /// The URI.
        uri: String,
    },
    /// A `#fragment`, which would otherwise be taken as part of the path or the handler.
    #[error(
        "FUNCTION_URI '{uri}' has a #fragment, which is not supported; a '#' in a file name is written %23 in a file:// URI"
    )]
    Fragment {
        /// The URI.
        uri: String,
    },
    /// A bad percent-escape.
    #[error("FUNCTION_URI '{uri}' has an invalid %-escape")]
    Escape {
        /// The URI.
        uri: String,
    },
}

impl FunctionUri {
    /// Parses a `FUNCTION_URI`.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let trimmed = uri.trim();
        if trimmed.is_empty() {
            return Err(UriError::Empty);
        }
        if trimmed.contains('#') {
            return Err(UriError::Fragment {
                uri: uri.to_owned(),
            });
        }
        let (location, query) = match trimmed.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (trimmed, None),
        };
        let path = match location.split_once("://") {
            Some((scheme, rest)) => {
                if !scheme.eq_ignore_ascii_case("file") {
                    return Err(UriError::Scheme {
                        uri: uri.to_owned(),
                        scheme: scheme.to_owned(),
                    });
                }
                let (host, path) = match rest.find('/') {
                    Some(slash) => rest.split_at(slash),
                    None => (rest, ""),
                };
                if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
                    return Err(UriError::Host {
                        uri: uri.to_owned(),
                        host: host.to_owned(),
                    });
                }
                percent_decode(path).ok_or_else(|| UriError::Escape {
                    uri: uri.to_owned(),
                })?
            }
            None => location.to_owned(),
        };
        if path.is_empty() {
            return Err(UriError::Empty);
        }
        let mut handler = None;
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("handler", _)) if handler.is_some() => {
                    return Err(UriError::DuplicateHandler {
                        uri: uri.to_owned(),
                    });
                }
                Some(("handler", value)) if !value.is_empty() => {
                    handler = Some(percent_decode(value).ok_or_else(|| UriError::Escape {
                        uri: uri.to_owned(),
                    })?);
                }
                _ => {
                    return Err(UriError::Param {
                        uri: uri.to_owned(),
                        param: pair.to_owned(),
                    });
                }
            }
        }
        Ok(FunctionUri {
            path: PathBuf::from(path),
            handler,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FunctionUri, UriError> {
        FunctionUri::parse(s)
    }

    #[test]
    fn file_uri_with_handler() {
        let uri = parse("file:///opt/fn/libgreeter.so?handler=hello").unwrap();
        assert_eq!(uri.path, PathBuf::from("/opt/fn/libgreeter.so"));
        assert_eq!(uri.handler.as_deref(), Some("hello"));
    }

    #[test]
    fn bare_paths_and_localhost() {
        assert_eq!(parse("/a/lib.so").unwrap().path, PathBuf::from("/a/lib.so"));
        assert_eq!(
            parse("rel/lib.so?handler=x").unwrap().handler.as_deref(),
            Some("x")
        );
        assert_eq!(
            parse("file://localhost/a/b.so").unwrap().path,
            PathBuf::from("/a/b.so")
        );
        assert_eq!(
            parse("file:///a%20b/c.so").unwrap().path,
            PathBuf::from("/a b/c.so")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse("  "), Err(UriError::Empty));
        assert!(
            matches!(parse("http://x/lib.so"), Err(UriError::Scheme { scheme, .. }) if scheme == "http")
        );
        assert!(
            matches!(parse("file://box/lib.so"), Err(UriError::Host { host, .. }) if host == "box")
        );
        assert!(
            matches!(parse("/lib.so?fn=x"), Err(UriError::Param { param, .. }) if param == "fn=x")
        );
        assert!(matches!(
            parse("/lib.so?handler="),
            Err(UriError::Param { .. })
        ));
        assert!(matches!(
            parse("file:///a%zz.so"),
            Err(UriError::Escape { .. })
        ));
        assert!(parse("file://").is_err());
        assert!(matches!(
            parse("/lib.so?handler=a&handler=b"),
            Err(UriError::DuplicateHandler { .. })
        ));
        assert!(matches!(
            parse("/lib.so?handler=a&handler=a"),
            Err(UriError::DuplicateHandler { .. })
        ));
        for fragment in [
            "file:///a/lib.so#x",
            "file:///a/lib.so?handler=hello#x",
            "/a/lib.so#",
        ] {
            assert!(
                matches!(parse(fragment), Err(UriError::Fragment { .. })),
                "{fragment}"
            );
        }
        assert_eq!(
            parse("file:///a/lib%23.so").unwrap().path,
            PathBuf::from("/a/lib#.so")
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = parse("s3://bucket/lib.so").unwrap_err().to_string();
        assert!(e.contains("only file://"), "{e}");
    }
}
