//! TEMPORARY placeholder until the real module lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    UnsupportedMediaType {
        content_type: String,
        offered: Vec<String>,
    },
    NotAcceptable {
        accept: String,
        offered: Vec<String>,
    },
}
impl std::fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for NegotiationError {}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub index: usize,
    pub content_type: String,
}
pub fn content_type<S: AsRef<str>>(
    _c: Option<&str>,
    _d: &str,
    _o: &[S],
) -> Result<usize, NegotiationError> {
    Ok(0)
}
pub fn accept<S: AsRef<str>>(_a: Option<&str>, o: &[S]) -> Result<Chosen, NegotiationError> {
    Ok(Chosen {
        index: 0,
        content_type: o[0].as_ref().to_owned(),
    })
}
