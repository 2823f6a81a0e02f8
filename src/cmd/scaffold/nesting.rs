//! How deeply a YAML document nests its collections, found by one linear pass before
//! `yaml_serde` parses it. libyaml's scanner, under `yaml_serde`, takes time quadratic in the
//! nesting of flow collections (a 100 000-deep `{a: {a: ...}}` takes minutes), and the
//! deserializer's own recursion limit applies only after the whole document was scanned; so
//! `invoker apply` refuses a document nested deeper than [`MAX_DEPTH`] before parsing it.
//!
//! This is not a YAML parser: it follows only what opens a collection — indentation, the
//! compact `- `, `? ` and `key: ` forms, `[` and `{`, the one-pair mappings of `[a: b]` — and
//! skips what cannot (comments, quoted and block scalars, the continuation lines of plain
//! scalars), telling them apart as libyaml's scanner does (a quote only starts a scalar where
//! a token starts, every YAML line break ends a line). For a well-formed document the depth it
//! finds is the number of collections nested at the deepest point (an alias aside); the tests
//! check that it never finds less than yaml_serde reads, so nesting cannot hide from it.

/// The deepest nesting of collections `invoker apply` parses (the repository's invoker.yaml
/// nests 5 deep).
pub const MAX_DEPTH: usize = 64;

/// Where a document first nests deeper than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// The line, from 1.
    pub line: usize,
}

/// Checks that `text` nests no collection deeper than `limit`.
pub fn check(text: &str, limit: usize) -> Result<(), TooDeep> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut scan = Scan {
        limit,
        line: 0,
        blocks: Vec::new(),
        flow: Vec::new(),
        flow_depth: 0,
        key_flow: 0,
        flow_plain: false,
        quote: None,
        block_scalar: None,
        plain: None,
    };
    for line in lines(text.as_bytes()) {
        scan.line += 1;
        scan.line_of(line)?;
    }
    Ok(())
}

/// The lines of `text`, split at every line break YAML's scanner knows: LF, CRLF, CR, and
/// U+0085, U+2028 and U+2029.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut at = 0;
        while at < text.len() {
            let width = match text[at..] {
                [b'\r', b'\n', ..] => 2,
                [b'\n' | b'\r', ..] => 1,
                [0xc2, 0x85, ..] => 2,
                [0xe2, 0x80, 0xa8 | 0xa9, ..] => 3,
                _ => 0,
            };
            if width > 0 {
                rest = Some(&text[at + width..]);
                return Some(&text[..at]);
            }
            at += 1;
        }
        rest = None;
        Some(text)
    })
}

/// An open flow collection.
struct Flow {
    /// Whether it is a sequence.
    sequence: bool,
    /// A sequence's current entry is a mapping of one pair (`[a: b]`).
    pair: bool,
    /// The depth of the deepest point in the current entry.
    entry_deepest: usize,
    /// The depth of the deepest point in the collection.
    deepest: usize,
}

struct Scan {
    limit: usize,
    line: usize,
    /// The open block collections: (column, whether it is a sequence).
    blocks: Vec<(usize, bool)>,
    /// The open flow collections.
    flow: Vec<Flow>,
    /// How deep the open flow collections nest: one each, and one more for each open pair
    /// (`[a: b]` is a sequence of one mapping).
    flow_depth: usize,
    /// The deepest flow nesting on this line before its block mapping key's `: ` (a key such
    /// as `[a]: b` is inside the mapping).
    key_flow: usize,
    /// Inside a plain scalar in a flow collection (which may go on over lines).
    flow_plain: bool,
    /// Inside a quoted scalar (its quote), which may go on over lines.
    quote: Option<u8>,
    /// Inside a block scalar: lines indented more than this (or blank) are its content.
    block_scalar: Option<isize>,
    /// The last line ended a plain scalar in block context: lines indented more than this
    /// continue it.
    plain: Option<isize>,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

/// Past the name of an anchor or an alias that starts at `at`.
fn skip_anchor(line: &[u8], mut at: usize) -> usize {
    while at < line.len() && (line[at].is_ascii_alphanumeric() || matches!(line[at], b'-' | b'_')) {
        at += 1;
    }
    at
}

/// Past a tag that starts at `at` (in a flow collection, a flow indicator ends it too).
fn skip_tag(line: &[u8], mut at: usize, flow: bool) -> usize {
    while at < line.len() && !is_space(line[at]) && !(flow && is_flow_indicator(line[at])) {
        at += 1;
    }
    at
}

impl Scan {
    fn depth(&self) -> usize {
        self.blocks.len() + self.flow_depth
    }

    fn too_deep(&self) -> Result<(), TooDeep> {
        self.deeper_than_limit(self.depth())
    }

    fn deeper_than_limit(&self, depth: usize) -> Result<(), TooDeep> {
        if depth > self.limit {
            return Err(TooDeep { line: self.line });
        }
        Ok(())
    }

    /// A flow collection opens.
    fn open_flow(&mut self, sequence: bool) -> Result<(), TooDeep> {
        self.flow_depth += 1;
        let depth = self.depth();
        self.flow.push(Flow {
            sequence,
            pair: false,
            entry_deepest: depth,
            deepest: depth,
        });
        self.key_flow = self.key_flow.max(self.flow_depth);
        self.too_deep()
    }

    /// The innermost flow collection closes.
    fn close_flow(&mut self) {
        if let Some(closed) = self.flow.pop() {
            self.flow_depth -= 1 + usize::from(closed.pair);
            if let Some(outer) = self.flow.last_mut() {
                outer.entry_deepest = outer.entry_deepest.max(closed.deepest);
                outer.deepest = outer.deepest.max(closed.deepest);
            }
        }
    }

    /// A `:` or `?` in a flow collection: in a sequence, the entry is a mapping of one pair,
    /// which holds its key too.
    fn flow_pair(&mut self) -> Result<(), TooDeep> {
        let Some(level) = self.flow.last_mut() else {
            return Ok(());
        };
        if !level.sequence || level.pair {
            return Ok(());
        }
        level.pair = true;
        level.entry_deepest += 1;
        level.deepest = level.deepest.max(level.entry_deepest);
        let deepest = level.entry_deepest;
        self.flow_depth += 1;
        self.key_flow = self.key_flow.max(deepest.saturating_sub(self.blocks.len()));
        self.deeper_than_limit(deepest)
    }

    /// A `,` in a flow collection: the next entry.
    fn next_flow_entry(&mut self) {
        let Some(level) = self.flow.last_mut() else {
            return;
        };
        let pair = std::mem::replace(&mut level.pair, false);
        self.flow_depth -= usize::from(pair);
        let depth = self.depth();
        if let Some(level) = self.flow.last_mut() {
            level.entry_deepest = depth;
        }
    }

    /// The column of the innermost block collection (-1 at the top level).
    fn parent(&self) -> isize {
        self.blocks.last().map_or(-1, |&(col, _)| col as isize)
    }

    /// A sequence entry at `col`.
    fn sequence_at(&mut self, col: usize) -> Result<(), TooDeep> {
        self.close_deeper_than(col);
        if self.blocks.last() != Some(&(col, true)) {
            // A new sequence, possibly the value of a mapping key at the same column.
            self.blocks.push((col, true));
        }
        self.too_deep()
    }

    /// A mapping key at `col`.
    fn mapping_at(&mut self, col: usize) -> Result<(), TooDeep> {
        self.close_deeper_than(col);
        if self.blocks.last() == Some(&(col, true)) {
            // A key after a sequence that was the value of the previous key.
            self.blocks.pop();
        }
        if self.blocks.last() != Some(&(col, false)) {
            self.blocks.push((col, false));
        }
        self.too_deep()
    }

    fn close_deeper_than(&mut self, col: usize) {
        while self.blocks.last().is_some_and(|&(c, _)| c > col) {
            self.blocks.pop();
        }
    }

    fn line_of(&mut self, line: &[u8]) -> Result<(), TooDeep> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line[indent..].iter().all(|&b| is_space(b));
        if let Some(parent) = self.block_scalar {
            if blank || indent as isize > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_some() || !self.flow.is_empty() {
            // A line inside a quoted scalar or a flow collection: indentation means nothing.
            return self.content(line, 0, None, false);
        }
        if blank {
            return Ok(());
        }
        self.key_flow = 0;
        if line[indent] == b'#' {
            self.plain = None; // A comment ends a plain scalar.
            return Ok(());
        }
        if indent == 0
            && (line.starts_with(b"---") || line.starts_with(b"..."))
            && line.get(3).is_none_or(|&b| is_space(b))
        {
            // A new document (or the end of one), which also ends a plain scalar.
            self.plain = None;
            self.blocks.clear();
            let at = 3 + line[3..].iter().take_while(|&&b| is_space(b)).count();
            return self.content(line, at, Some(at), true);
        }
        if let Some(parent) = self.plain {
            if indent as isize > parent {
                return Ok(());
            }
            self.plain = None;
        }
        if indent == 0 && line[0] == b'%' {
            return Ok(()); // A directive.
        }
        // `- `, `? ` and `: ` open a node on the same line, each further in.
        let mut at = indent;
        while at < line.len()
            && matches!(line[at], b'-' | b'?' | b':')
            && line.get(at + 1).is_none_or(|&b| is_space(b))
        {
            if line[at] == b'-' {
                self.sequence_at(at)?;
            } else {
                self.mapping_at(at)?;
            }
            at += 1;
            while at < line.len() && is_space(line[at]) {
                at += 1;
            }
        }
        if at == indent {
            self.close_deeper_than(indent);
        }
        self.content(line, at, Some(at), true)
    }

    /// Scans `line` from `at`. In block context, `key` is the column where a mapping key on
    /// this line starts, and `node` says whether a node may start at `at`.
    fn content(
        &mut self,
        line: &[u8],
        mut at: usize,
        mut key: Option<usize>,
        mut node: bool,
    ) -> Result<(), TooDeep> {
        let mut plain = false;
        while at < line.len() {
            let b = line[at];
            if let Some(quote) = self.quote {
                if quote == b'"' && b == b'\\' {
                    at += 2;
                    continue;
                }
                if b == quote {
                    if quote == b'\'' && line.get(at + 1) == Some(&b'\'') {
                        at += 2;
                        continue;
                    }
                    self.quote = None;
                }
                at += 1;
                continue;
            }
            if is_space(b) {
                at += 1;
                continue;
            }
            if b == b'#' && (at == 0 || is_space(line[at - 1])) {
                // A comment, which also ends a plain scalar.
                self.flow_plain = false;
                plain = false;
                break;
            }
            if !self.flow.is_empty() {
                at = self.flow_token(line, at)?;
                node = false;
                continue;
            }
            // Block context.
            if node {
                match b {
                    b'"' | b'\'' => {
                        self.quote = Some(b);
                        node = false;
                        at += 1;
                        continue;
                    }
                    // An anchor or a tag: the node follows.
                    b'&' => {
                        at = skip_anchor(line, at + 1);
                        continue;
                    }
                    b'!' => {
                        at = skip_tag(line, at + 1, false);
                        continue;
                    }
                    b'[' | b'{' => {
                        self.flow_plain = false;
                        self.open_flow(b == b'[')?;
                        at += 1;
                        continue;
                    }
                    b'|' | b'>' => {
                        // A block scalar (what follows on this line is its header). Its lines
                        // are indented by at least 1, even at the top level.
                        self.block_scalar = Some(self.parent().max(0));
                        return Ok(());
                    }
                    _ => {}
                }
            }
            if b == b':' && line.get(at + 1).is_none_or(|&b| is_space(b)) {
                // The value of a block mapping key.
                if let Some(col) = key.take() {
                    self.mapping_at(col)?;
                    // A flow collection before the `: ` is the key, inside the mapping.
                    self.deeper_than_limit(self.blocks.len() + self.key_flow)?;
                }
                node = true;
                plain = false;
                at += 1;
                continue;
            }
            plain = node || plain;
            node = false;
            at += 1;
        }
        if self.flow.is_empty() && self.quote.is_none() && plain {
            self.plain = Some(self.parent());
        }
        Ok(())
    }

    /// One token (or one character of a plain scalar) at `at` inside a flow collection; returns
    /// where the next one starts.
    fn flow_token(&mut self, line: &[u8], at: usize) -> Result<usize, TooDeep> {
        let b = line[at];
        if self.flow_plain {
            // A plain scalar ends at a flow indicator, or at a `:` that is followed by a space
            // or a flow indicator; anything else (quotes included) is part of it.
            let ends = is_flow_indicator(b)
                || b == b':'
                    && line.get(at + 1).is_none_or(|&next| {
                        is_space(next) || next == b'?' || is_flow_indicator(next)
                    });
            if !ends {
                return Ok(at + 1);
            }
            self.flow_plain = false;
        }
        match b {
            b'[' | b'{' => self.open_flow(b == b'[')?,
            b']' | b'}' => self.close_flow(),
            b',' => self.next_flow_entry(),
            b':' | b'?' => self.flow_pair()?,
            b'"' | b'\'' => self.quote = Some(b),
            b'&' | b'*' => return Ok(skip_anchor(line, at + 1)),
            b'!' => return Ok(skip_tag(line, at + 1, true)),
            _ => self.flow_plain = true,
        }
        Ok(at + 1)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize as _;

    use super::*;

    fn depth(text: &str) -> usize {
        (0..=MAX_DEPTH)
            .find(|&limit| check(text, limit).is_ok())
            .expect("deeper than MAX_DEPTH")
    }

    #[test]
    fn counts_collections() {
        assert_eq!(depth(""), 0);
        assert_eq!(depth("plain\n"), 0);
        assert_eq!(depth("a: b\n"), 1);
        assert_eq!(depth("a:\n  b: c\n"), 2);
        assert_eq!(depth("a:\n- b\n- c\nd: e\n"), 2);
        assert_eq!(depth("- - - x\n"), 3);
        assert_eq!(depth("- a: b\n  c:\n    - d\n- e\n"), 3);
        assert_eq!(depth("a: {b: [c, {d: e}]}\n"), 4);
        assert_eq!(depth("a: [\n  [b,\n   c],\n  d]\n"), 3);
        assert_eq!(depth("? a\n: b\n"), 1);
        assert_eq!(depth("--- [a]\n--- b: c\n"), 1);
        assert_eq!(depth("a: &x !t {b: c}\n"), 2);
    }

    #[test]
    fn skips_what_cannot_nest() {
        // Brackets and indentation inside scalars and comments.
        assert_eq!(depth("a: \"[{\\\"[\"\nb: 'it''s {'\n"), 1);
        assert_eq!(depth("a: x[{y # [[[\n# {{{{\n"), 1);
        assert_eq!(
            depth("a: |\n  fn f() { [[ }\n      deeper: {\n\n  x\nb: c\n"),
            1
        );
        assert_eq!(depth("- template: |\n    {{{{\n  path: x\n"), 2);
        assert_eq!(depth("a: \"line one\n  [[[ line two\"\nb: c\n"), 1);
        assert_eq!(
            depth("a: plain text\n  continued [[[\n    more: {{\nb: c\n"),
            1
        );
        assert_eq!(depth("a: don't [x\nb: c\n"), 1);
    }

    #[test]
    fn the_embedded_invoker_is_shallow() {
        assert_eq!(depth(crate::cmd::scaffold::EMBEDDED), 6);
    }

    /// The depth of a parsed value: how many collections nest at its deepest point.
    fn parsed_depth(value: &yaml_serde::Value) -> usize {
        match value {
            yaml_serde::Value::Sequence(items) => {
                1 + items.iter().map(parsed_depth).max().unwrap_or(0)
            }
            yaml_serde::Value::Mapping(map) => {
                1 + map
                    .iter()
                    .map(|(k, v)| parsed_depth(k).max(parsed_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            yaml_serde::Value::Tagged(tagged) => parsed_depth(&tagged.value),
            _ => 0,
        }
    }

    fn value() -> impl Strategy<Value = yaml_serde::Value> {
        let scalar = prop_oneof![
            "[ -~\n]{0,12}".prop_map(yaml_serde::Value::from),
            any::<i64>().prop_map(yaml_serde::Value::from),
            Just(yaml_serde::Value::Null),
        ];
        scalar.prop_recursive(8, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(yaml_serde::Value::Sequence),
                prop::collection::vec(("[a-z{}\\[\\]#:' -]{1,6}", inner), 0..4).prop_map(
                    |entries| yaml_serde::Value::Mapping(
                        entries
                            .into_iter()
                            .map(|(k, v)| (yaml_serde::Value::from(k), v))
                            .collect()
                    )
                ),
            ]
        })
    }

    proptest! {
        /// What yaml_serde writes (block style, quoted and block scalars) nests as deep as the
        /// value it wrote.
        #[test]
        fn finds_the_depth_of_what_yaml_serde_writes(value in value()) {
            let text = yaml_serde::to_string(&value).unwrap();
            let parsed: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
            prop_assert_eq!(depth(&text), parsed_depth(&parsed), "{}", text);
        }

        /// So does JSON, which is YAML in flow style, on one line or pretty over several.
        #[test]
        fn finds_the_depth_of_json(value in value()) {
            let expected = parsed_depth(&value);
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                let parsed: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
                prop_assert_eq!(parsed_depth(&parsed), expected, "{}", text);
                prop_assert_eq!(depth(&text), expected, "{}", text);
            }
        }
    }

    /// Pieces of YAML from which to build documents that a parser might read otherwise than
    /// the scan does (no aliases: an alias makes depth without nesting text).
    fn pieces() -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "- ", "- ", "-", ": ", ": ", ":", "? ", "?", "[", "[", "[", "]", "]", "{", "{", "}",
            "}", ", ", ",", "a", "a: ", "[a: ", "{a: ", "a:[", "a:\"", "b c", "'", "''", "\"",
            "\\", "#", " #", "&x ", "&x", "!t ", "!t", "|", ">", "|2", "\n", "\n", "\n ", "\n  ",
            "\n  - ", "\n- ", "\n    ", "\r", "\r\n", "\u{2028}", "\u{85}", "---", "--- ", "...",
            "%", "\t", " ",
        ];
        prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever yaml_serde reads from a document, the scan finds at least as deep.
        #[test]
        fn never_finds_less_than_the_parser(text in pieces()) {
            if let Ok(parsed) = yaml_serde::from_str::<yaml_serde::Value>(&text) {
                prop_assert!(depth(&text) >= parsed_depth(&parsed), "{:?}: {:?}", text, parsed);
            }
        }
    }

    /// The deepest document of a stream, as yaml_serde reads it; None if it does not.
    fn parsed_stream_depth(text: &str) -> Option<usize> {
        let mut deepest = 0;
        for document in yaml_serde::Deserializer::from_str(text) {
            let value = yaml_serde::Value::deserialize(document).ok()?;
            deepest = deepest.max(parsed_depth(&value));
        }
        Some(deepest)
    }

    #[test]
    fn finds_what_hides_from_a_simpler_scan() {
        // Deep nesting behind what a simpler scan would take for a quote, an anchor's name, a
        // block scalar or the continuation of a plain scalar, or across line breaks other than
        // LF; each is valid YAML nested 70 deep (or more).
        let n = 70;
        let deep = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let pairs = format!("{}x{}", "[a: ".repeat(n / 2 + 1), "]".repeat(n / 2 + 1));
        for text in [
            format!("{{a:\"b, {deep}}}"),
            format!("[a\n\"b, {deep}]"),
            format!("[&a,{deep}]"),
            format!("plain\n---\n{deep}"),
            format!("--- |\n  x\n---\n{deep}"),
            format!("a: |\r  x\rb: {deep}"),
            format!("a: b\u{2028}c: {deep}"),
            format!("a: b\r\nc: {deep}"),
            format!("{deep}: x"),
            pairs.clone(),
            format!("{pairs}: x"),
        ] {
            let parsed = parsed_stream_depth(&text).unwrap_or_else(|| panic!("{text:?} is YAML"));
            assert!(parsed > MAX_DEPTH, "{text:?}: {parsed}");
            assert!(check(&text, MAX_DEPTH).is_err(), "{text:?}");
        }
    }

    #[test]
    fn refuses_deep_documents_at_the_line_that_goes_too_deep() {
        let n = 100_000;
        for deep in [
            format!("{}{}\n", "{a: ".repeat(n), "}".repeat(n)),
            format!("{}{}\n", "[".repeat(n), "]".repeat(n)),
            format!("{}x\n", "- ".repeat(n)),
            format!("a:\n{}", "[\n".repeat(n)),
        ] {
            let refused = check(&deep, MAX_DEPTH).unwrap_err();
            assert!(refused.line <= 2 + MAX_DEPTH, "{refused:?}");
        }
        let indented: String = (0..=MAX_DEPTH)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        assert_eq!(
            check(&indented, MAX_DEPTH),
            Err(TooDeep {
                line: MAX_DEPTH + 1
            })
        );
        let indented: String = (0..MAX_DEPTH)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        assert_eq!(check(&indented, MAX_DEPTH), Ok(()));
    }
}
