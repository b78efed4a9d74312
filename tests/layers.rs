//! Architecture check: the file graph under `src/` has no import cycles, and imports between
//! top-level modules point down the layers of [`LAYERS`] only.
//!
//! A module using its own submodules (a `mod.rs` re-exporting or calling what its children
//! define) is ownership, not a dependency between peers: those edges are left out of the cycle
//! check. A child using its parent, siblings using each other and every edge between top-level
//! modules all count.
//!
//! A small std-only lexer stands in for `syn` so the check costs no dependency. It understands
//! enough Rust to find module paths (use trees, inline paths, `super::`, aliases, child modules),
//! not to parse items; the unit tests at the bottom pin what it must and must not count.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules by rank: higher is nearer the listener. An import may go to a module of
/// the same or a lower rank only. Leaves (0) may import each other; the cycle check keeps them
/// acyclic. Entries for modules that do not exist yet are harmless, so the target layering can
/// be declared before the refactor lands.
const LAYERS: &[(&str, u8)] = &[
    // The crate root, start/reload/stop and the command line wire everything together.
    ("main", 7),
    // The binary's command-line shape (clap), beside main.rs.
    ("cli", 7),
    ("lib", 7),
    ("lifecycle", 7),
    ("commands", 7),
    ("server", 6),
    // The two request handlers the server dispatches to.
    ("gateway", 5),
    ("admin", 5),
    ("login", 4),
    ("forward_auth", 4),
    ("proxy", 3),
    // The policy stage of a request.
    ("access", 2),
    ("directory", 2),
    ("session", 1),
    // The signed identity assertion: beside the cookie keys, used by access and login.
    ("assertion", 1),
    // Pure data and decisions, no I/O: leaves that config and the store may name.
    ("policy", 0),
    ("users", 0),
    ("config", 0),
    ("store", 0),
    ("state", 0),
    ("mailer", 0),
    ("audit", 0),
    ("metrics", 0),
    // Responses and errors.
    ("http", 0),
    ("pages", 0),
    ("body", 0),
    ("io", 0),
    ("clock", 0),
    ("random", 0),
    ("email", 0),
    ("path", 0),
    ("return_to", 0),
    ("dn", 0),
    ("trust", 0),
    ("private_file", 0),
];

/// The library's name: the binary root reaches the library through it.
const LIB_NAME: &str = "otpgate";

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// Punctuation; `::`, `->` and `=>` are one token so `>` can count generic nesting.
    Punct(&'static str),
    /// A literal or a lifetime: never part of a path, kept so neighbours stay apart.
    Opaque,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

impl Token {
    fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }

    fn is(&self, p: &str) -> bool {
        matches!(&self.tok, Tok::Punct(q) if *q == p)
    }

    fn is_word(&self, w: &str) -> bool {
        self.ident() == Some(w)
    }
}

const PUNCTS: &[&str] = &[
    "{", "}", "(", ")", "[", "]", "<", ">", ",", ";", ":", "*", "#", "!", "$", ".", "=", "&", "|",
    "+", "-", "/", "%", "^", "@", "?", "~",
];

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Skips a quoted string starting at the opening `"` at `i`; `raw_hashes` is `Some(n)` for a
/// raw string closed by `"` and `n` hashes. Returns the index after the closing quote.
fn skip_string(c: &[char], mut i: usize, raw_hashes: Option<usize>, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\n' => {
                *line += 1;
                i += 1;
            }
            '\\' if raw_hashes.is_none() => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => {
                let hashes = raw_hashes.unwrap_or(0);
                if (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    return i + 1 + hashes;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips a character literal starting at its opening `'` at `i`, or returns `None` when the
/// quote starts a lifetime or label instead.
fn skip_char(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        return Some(j + 1);
    }
    (c.get(i + 2) == Some(&'\'')).then_some(i + 3)
}

fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            let start = line;
            i = skip_string(&c, i, None, &mut line);
            out.push(Token {
                tok: Tok::Opaque,
                line: start,
            });
        } else if ch == '\'' {
            if let Some(end) = skip_char(&c, i) {
                i = end;
            } else {
                i += 1;
                while i < c.len() && is_ident_continue(c[i]) {
                    i += 1;
                }
            }
            out.push(Token {
                tok: Tok::Opaque,
                line,
            });
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident_continue(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let at = c.get(i).copied();
            let start_line = line;
            match (word.as_str(), at) {
                ("b" | "c", Some('"')) => i = skip_string(&c, i, None, &mut line),
                ("b", Some('\'')) => i = skip_char(&c, i).unwrap_or(i + 1),
                ("r" | "br" | "cr", Some('"' | '#')) => {
                    let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
                    if c.get(i + hashes) == Some(&'"') {
                        i = skip_string(&c, i + hashes, Some(hashes), &mut line);
                    } else if word == "r" && hashes == 1 {
                        // A raw identifier, `r#type`.
                        let s = i + 1;
                        i = s;
                        while i < c.len() && is_ident_continue(c[i]) {
                            i += 1;
                        }
                        out.push(Token {
                            tok: Tok::Ident(c[s..i].iter().collect()),
                            line,
                        });
                        continue;
                    } else {
                        out.push(Token {
                            tok: Tok::Ident(word),
                            line,
                        });
                        continue;
                    }
                }
                _ => {
                    out.push(Token {
                        tok: Tok::Ident(word),
                        line,
                    });
                    continue;
                }
            }
            out.push(Token {
                tok: Tok::Opaque,
                line: start_line,
            });
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (is_ident_continue(c[i])
                    || (c[i] == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Opaque,
                line,
            });
        } else {
            let two = match (ch, next) {
                (':', Some(':')) => Some("::"),
                ('-', Some('>')) => Some("->"),
                ('=', Some('>')) => Some("=>"),
                _ => None,
            };
            let tok = if let Some(p) = two {
                i += 2;
                Tok::Punct(p)
            } else {
                i += 1;
                PUNCTS
                    .iter()
                    .find(|p| p.starts_with(ch))
                    .map_or(Tok::Opaque, |p| Tok::Punct(p))
            };
            out.push(Token { tok, line });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Finding references

/// One reference from a file into the crate, as an absolute module path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    line: usize,
    /// Segments after `crate`; may end in an item name (a type, a function).
    path: Vec<String>,
}

impl Ref {
    fn display(&self) -> String {
        if self.path.is_empty() {
            "crate".to_owned()
        } else {
            format!("crate::{}", self.path.join("::"))
        }
    }
}

/// A path as written, before resolution.
#[derive(Debug)]
struct RawPath {
    line: usize,
    segs: Vec<String>,
    /// The module (file module plus inline modules) the path is written in.
    scope: Vec<String>,
    /// For a use leaf: the name it brings into scope.
    alias: Option<String>,
    is_use: bool,
}

/// Index of the token closing the group opened at `open` (`(`, `[` or `{`).
fn matching(t: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, tok) in t.iter().enumerate().skip(open) {
        if tok.is("(") || tok.is("[") || tok.is("{") {
            depth += 1;
        } else if tok.is(")") || tok.is("]") || tok.is("}") {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return j;
            }
        }
    }
    t.len()
}

/// Parses one `cfg` predicate at `i`; whether it can only hold in test builds.
fn cfg_test_only(t: &[Token], i: &mut usize) -> bool {
    let Some(name) = t.get(*i).and_then(Token::ident).map(str::to_owned) else {
        *i += 1;
        return false;
    };
    *i += 1;
    if t.get(*i).is_some_and(|x| x.is("=")) {
        *i += 2;
        return false;
    }
    if !t.get(*i).is_some_and(|x| x.is("(")) {
        return name == "test";
    }
    *i += 1;
    let mut any_test_only = false;
    while *i < t.len() && !t[*i].is(")") {
        if t[*i].is(",") {
            *i += 1;
            continue;
        }
        any_test_only |= cfg_test_only(t, i);
    }
    *i += 1;
    // `all(test, ..)` needs test; `any(..)` and `not(..)` do not.
    name == "all" && any_test_only
}

/// Whether the attribute body `t[from..to]` is `cfg(<predicate true only under test>)`.
fn attr_is_test_only(t: &[Token], from: usize, to: usize) -> bool {
    if !(t[from].is_word("cfg") && t.get(from + 1).is_some_and(|x| x.is("("))) {
        return false;
    }
    let mut i = from + 2;
    i < to && cfg_test_only(&t[..to], &mut i)
}

const ITEM_WORDS: &[&str] = &[
    "fn",
    "mod",
    "impl",
    "struct",
    "enum",
    "union",
    "trait",
    "type",
    "const",
    "static",
    "use",
    "extern",
    "macro_rules",
    "unsafe",
    "async",
];

/// Skips the item (or field, variant, statement) starting at `i`; returns the index after it,
/// or of the `}` closing the enclosing block.
fn skip_item(t: &[Token], mut i: usize) -> usize {
    while t.get(i).is_some_and(|x| x.is("#")) {
        let open = if t.get(i + 1).is_some_and(|x| x.is("!")) {
            i + 2
        } else {
            i + 1
        };
        i = matching(t, open) + 1;
    }
    let mut k = i;
    if t.get(k).is_some_and(|x| x.is_word("pub")) {
        k += 1;
        if t.get(k).is_some_and(|x| x.is("(")) {
            k = matching(t, k) + 1;
        }
    }
    let is_item = t
        .get(k)
        .and_then(Token::ident)
        .is_some_and(|w| ITEM_WORDS.contains(&w));
    let mut angle = 0usize;
    while i < t.len() {
        let x = &t[i];
        if x.is("(") || x.is("[") {
            i = matching(t, i) + 1;
        } else if x.is("{") {
            i = matching(t, i) + 1;
            if is_item {
                return i;
            }
        } else if x.is("}") {
            return i;
        } else if x.is(";") || (x.is(",") && !is_item && angle == 0) {
            return i + 1;
        } else {
            if x.is("<") {
                angle += 1;
            } else if x.is(">") {
                angle = angle.saturating_sub(1);
            }
            i += 1;
        }
    }
    i
}

/// One leaf of a use tree: its segments (with the line of the last), and the name it binds.
#[derive(Debug)]
struct UseLeaf {
    segs: Vec<String>,
    line: usize,
    alias: Option<String>,
}

/// Parses the use tree at `i` under `prefix`; returns the index after it.
fn use_tree(t: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<UseLeaf>) -> usize {
    let mut segs = prefix.to_vec();
    if segs.is_empty() && t.get(i).is_some_and(|x| x.is("::")) {
        segs.push("::".to_owned());
        i += 1;
    }
    while i < t.len() {
        let x = &t[i];
        if x.is("{") {
            i += 1;
            while i < t.len() && !t[i].is("}") {
                if t[i].is(",") {
                    i += 1;
                } else {
                    let before = i;
                    i = use_tree(t, i, &segs, out);
                    if i == before {
                        i += 1;
                    }
                }
            }
            return i + 1;
        }
        if x.is("*") {
            out.push(UseLeaf {
                segs,
                line: x.line,
                alias: None,
            });
            return i + 1;
        }
        let Some(name) = x.ident() else {
            return i;
        };
        let line = x.line;
        segs.push(name.to_owned());
        i += 1;
        if t.get(i).is_some_and(|y| y.is("::")) {
            i += 1;
            continue;
        }
        let mut alias = if name == "self" {
            segs.pop();
            segs.last().cloned()
        } else {
            Some(name.to_owned())
        };
        if t.get(i).is_some_and(|y| y.is_word("as")) {
            alias = t
                .get(i + 1)
                .and_then(Token::ident)
                .filter(|a| *a != "_")
                .map(str::to_owned);
            i += 2;
        }
        out.push(UseLeaf { segs, line, alias });
        return i;
    }
    i
}

/// Collects every path in `src` that may name a crate module, skipping test-only items.
fn raw_paths(t: &[Token]) -> (Vec<RawPath>, HashMap<Vec<String>, BTreeSet<String>>) {
    let mut out = Vec::new();
    // Child modules declared per scope (relative to the file's module).
    let mut children: HashMap<Vec<String>, BTreeSet<String>> = HashMap::new();
    let mut scope: Vec<String> = Vec::new();
    let mut mod_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        let x = &t[i];
        if x.is("#") {
            let inner = t.get(i + 1).is_some_and(|y| y.is("!"));
            let open = if inner { i + 2 } else { i + 1 };
            if t.get(open).is_some_and(|y| y.is("[")) {
                let close = matching(t, open);
                if attr_is_test_only(t, open + 1, close) {
                    i = if inner {
                        // The whole enclosing module is test-only: skip to its closing brace.
                        let mut j = close + 1;
                        let mut d = 0usize;
                        while j < t.len() && !(d == 0 && t[j].is("}")) {
                            if t[j].is("{") {
                                d += 1;
                            } else if t[j].is("}") {
                                d -= 1;
                            }
                            j += 1;
                        }
                        j
                    } else {
                        skip_item(t, close + 1)
                    };
                    continue;
                }
            }
            i += 1;
        } else if x.is("{") {
            depth += 1;
            i += 1;
        } else if x.is("}") {
            if mod_depths.last() == Some(&depth) {
                mod_depths.pop();
                scope.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
        } else if x.is_word("mod") {
            if let Some(name) = t.get(i + 1).and_then(Token::ident) {
                children
                    .entry(scope.clone())
                    .or_default()
                    .insert(name.to_owned());
                if t.get(i + 2).is_some_and(|y| y.is("{")) {
                    scope.push(name.to_owned());
                    mod_depths.push(depth + 1);
                }
            }
            i += 2;
        } else if x.is_word("use") && !t.get(i + 1).is_some_and(|y| y.is("<")) {
            let mut leaves = Vec::new();
            i = use_tree(t, i + 1, &[], &mut leaves);
            while i < t.len() && !t[i].is(";") {
                i += 1;
            }
            for leaf in leaves {
                out.push(RawPath {
                    line: leaf.line,
                    segs: leaf.segs,
                    scope: scope.clone(),
                    alias: leaf.alias,
                    is_use: true,
                });
            }
        } else if x.ident().is_some() && t.get(i + 1).is_some_and(|y| y.is("::")) {
            let prev = i.checked_sub(1).map(|p| &t[p]);
            let continues = prev.is_some_and(|p| p.is("::") || p.is(".") || p.is("$"));
            let visibility = prev.is_some_and(|p| p.is_word("in"));
            let line = x.line;
            let mut segs = Vec::new();
            while let Some(s) = t.get(i).and_then(Token::ident) {
                segs.push(s.to_owned());
                if t.get(i + 1).is_some_and(|y| y.is("::"))
                    && t.get(i + 2).and_then(Token::ident).is_some()
                {
                    i += 2;
                } else {
                    i += 1;
                    break;
                }
            }
            if !continues && !visibility {
                out.push(RawPath {
                    line,
                    segs,
                    scope: scope.clone(),
                    alias: None,
                    is_use: false,
                });
            }
        } else {
            i += 1;
        }
    }
    (out, children)
}

/// The crate references in one file. `module` is the file's module path (`[]` for the crate
/// root); `bin_root` marks the binary's root, which reaches the library as `otpgate::`.
fn crate_refs(src: &str, module: &[String], bin_root: bool) -> Vec<Ref> {
    let tokens = lex(src);
    let (raws, children) = raw_paths(&tokens);
    let mut aliases: HashMap<(Vec<String>, String), Vec<String>> = HashMap::new();
    let mut refs = Vec::new();
    // Uses first, in order, so later paths (and later uses) can go through the names they bind.
    let (uses, inline): (Vec<_>, Vec<_>) = raws.into_iter().partition(|r| r.is_use);
    for raw in uses.iter().chain(&inline) {
        let scope: Vec<String> = module.iter().chain(&raw.scope).cloned().collect();
        let Some(first) = raw.segs.first() else {
            continue;
        };
        let rest = &raw.segs[1..];
        let absolute: Option<Vec<String>> = match first.as_str() {
            "::" => None,
            "crate" if bin_root => None,
            "crate" => Some(rest.to_vec()),
            LIB_NAME if bin_root => Some(rest.to_vec()),
            "self" => Some(scope.iter().chain(rest).cloned().collect()),
            "super" => {
                let ups = raw.segs.iter().take_while(|s| *s == "super").count();
                scope.len().checked_sub(ups).map(|keep| {
                    scope[..keep]
                        .iter()
                        .chain(&raw.segs[ups..])
                        .cloned()
                        .collect()
                })
            }
            name => {
                if let Some(target) = aliases.get(&(raw.scope.clone(), name.to_owned())) {
                    Some(target.iter().chain(rest).cloned().collect())
                } else if children.get(&raw.scope).is_some_and(|c| c.contains(name)) && !bin_root {
                    Some(scope.iter().chain(&raw.segs).cloned().collect())
                } else {
                    None
                }
            }
        };
        let Some(path) = absolute else {
            continue;
        };
        if let Some(a) = &raw.alias {
            aliases.insert((raw.scope.clone(), a.clone()), path.clone());
        }
        refs.push(Ref {
            line: raw.line,
            path,
        });
    }
    refs.sort_by_key(|r| r.line);
    refs
}

// ---------------------------------------------------------------------------------------------
// The crate

/// One scanned source file.
#[derive(Debug)]
struct SourceFile {
    /// `src/login/send.rs`, with `/` on every platform.
    name: String,
    /// Its top-level module: `login`, or `lib` / `main` for the roots.
    top: String,
    refs: Vec<Ref>,
}

#[derive(Debug)]
struct Crate {
    files: Vec<SourceFile>,
    /// Module path to index in `files`.
    modules: BTreeMap<Vec<String>, usize>,
}

impl Crate {
    /// The most specific file that defines `path` (or the module containing it).
    fn file_of(&self, path: &[String]) -> Option<usize> {
        (0..=path.len())
            .rev()
            .find_map(|k| self.modules.get(&path[..k]).copied())
    }

    /// Every resolved reference: (from file, line, to file, the reference). Self-references
    /// are dropped.
    fn edges(&self) -> Vec<(usize, usize, usize, &Ref)> {
        let mut out = Vec::new();
        for (from, f) in self.files.iter().enumerate() {
            for r in &f.refs {
                if let Some(to) = self.file_of(&r.path)
                    && to != from
                {
                    out.push((from, r.line, to, r));
                }
            }
        }
        out
    }
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn load_crate() -> Crate {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut paths = Vec::new();
    rs_files(&src, &mut paths);
    let mut files = Vec::new();
    let mut modules = BTreeMap::new();
    for p in paths {
        let rel = p.strip_prefix(&src).expect("under src");
        let mut segs: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let last = segs.pop().expect("a file name");
        let stem = last.trim_end_matches(".rs").to_owned();
        // Tests may reach anywhere.
        if stem == "tests" {
            continue;
        }
        let bin_root = segs.is_empty() && stem == "main";
        let crate_root = segs.is_empty() && stem == "lib";
        let top = segs.first().cloned().unwrap_or_else(|| stem.clone());
        if stem != "mod" && !crate_root && !bin_root {
            segs.push(stem);
        }
        let text =
            fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        let refs = crate_refs(&text, &segs, bin_root);
        if !bin_root {
            modules.insert(segs, files.len());
        }
        let name = format!(
            "src/{}",
            rel.iter()
                .map(|s| s.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        );
        files.push(SourceFile { name, top, refs });
    }
    assert!(
        modules.contains_key(&Vec::new()),
        "src/lib.rs not found under {}",
        src.display()
    );
    Crate { files, modules }
}

// ---------------------------------------------------------------------------------------------
// Cycles

/// Strongly connected components (Tarjan), each sorted, in no particular order.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }

    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.adj[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                component.sort_unstable();
                self.out.push(component);
            }
        }
    }

    let n = adj.len();
    let mut t = Tarjan {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.out
}

/// Components with more than one node, sorted by their first node.
fn cycles(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut out: Vec<_> = strongly_connected(adj)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    out.sort();
    out
}

/// A shortest path from `from` to `to` that stays inside `inside`, both ends included.
fn shortest_path(
    adj: &[Vec<usize>],
    inside: &BTreeSet<usize>,
    from: usize,
    to: usize,
) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::from([(from, from)]);
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        if v == to {
            let mut path = vec![v];
            let mut at = v;
            while at != from {
                at = parent[&at];
                path.push(at);
            }
            path.reverse();
            return Some(path);
        }
        for &w in &adj[v] {
            if inside.contains(&w) && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// A shortest cycle inside `component` that uses an edge accepted by `prefer` when there is
/// one (else any shortest one), as its nodes in order; the last one leads back to the first.
fn example_cycle(
    adj: &[Vec<usize>],
    component: &[usize],
    prefer: impl Fn(usize, usize) -> bool,
) -> Vec<usize> {
    let inside: BTreeSet<usize> = component.iter().copied().collect();
    let edges: Vec<(usize, usize)> = component
        .iter()
        .flat_map(|&u| adj[u].iter().map(move |&v| (u, v)))
        .filter(|(_, v)| inside.contains(v))
        .collect();
    let preferred: Vec<_> = edges.iter().filter(|&&(u, v)| prefer(u, v)).collect();
    let candidates = if preferred.is_empty() {
        edges.iter().collect()
    } else {
        preferred
    };
    candidates
        .into_iter()
        .filter_map(|&(u, v)| {
            // The edge u -> v, then back from v to u.
            let back = shortest_path(adj, &inside, v, u)?;
            Some(std::iter::once(u).chain(back).collect::<Vec<_>>())
        })
        .map(|mut cycle| {
            cycle.pop();
            cycle
        })
        .min_by_key(Vec::len)
        .unwrap_or_else(|| component.to_vec())
}

// ---------------------------------------------------------------------------------------------
// The checks

fn rank(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|&(_, r)| r)
}

#[test]
fn no_import_cycles_between_files() {
    let krate = load_crate();
    let files = &krate.files;
    let mut module_of: Vec<&[String]> = vec![&[]; files.len()];
    for (m, &i) in &krate.modules {
        module_of[i] = m;
    }
    let owns = |from: usize, to: usize| {
        let (outer, inner) = (module_of[from], module_of[to]);
        inner.len() > outer.len() && inner.starts_with(outer)
    };
    let mut first: BTreeMap<(usize, usize), (usize, &Ref)> = BTreeMap::new();
    for (from, line, to, r) in krate.edges() {
        if !owns(from, to) {
            first.entry((from, to)).or_insert((line, r));
        }
    }
    let mut adj = vec![Vec::new(); files.len()];
    for &(from, to) in first.keys() {
        adj[from].push(to);
    }
    let edge = |from: usize, to: usize| {
        let (line, r) = first[&(from, to)];
        format!(
            "{}:{line} uses {} -> {}",
            files[from].name,
            r.display(),
            files[to].name
        )
    };
    let found = cycles(&adj);
    let mut report = String::new();
    for component in &found {
        let names: Vec<&str> = component.iter().map(|&f| files[f].name.as_str()).collect();
        let _ = writeln!(
            report,
            "\nimport cycle among {} files: {}",
            component.len(),
            names.join(", ")
        );
        // Between top-level modules is where the layering is decided, so show such an edge.
        let crosses = |u: usize, v: usize| files[u].top != files[v].top;
        let path = example_cycle(&adj, component, crosses);
        let _ = writeln!(report, "  for example:");
        for (k, &from) in path.iter().enumerate() {
            let _ = writeln!(report, "    {}", edge(from, path[(k + 1) % path.len()]));
        }
        let inside: BTreeSet<usize> = component.iter().copied().collect();
        let mut between: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
        for &(u, v) in first.keys() {
            if inside.contains(&u) && inside.contains(&v) && crosses(u, v) {
                between
                    .entry((files[u].top.as_str(), files[v].top.as_str()))
                    .or_insert((u, v));
            }
        }
        if !between.is_empty() {
            let _ = writeln!(
                report,
                "  edges between top-level modules inside it (one file pair each):"
            );
            for &(u, v) in between.values() {
                let _ = writeln!(
                    report,
                    "    {} -> {}: {}",
                    files[u].top,
                    files[v].top,
                    edge(u, v)
                );
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} import cycle(s) in src/; a file in a cycle must stop depending on the others (move \
         the shared item down into a lower file, or pass it in):\n{report}",
        found.len()
    );
}

#[test]
fn imports_point_down_the_layers() {
    let krate = load_crate();
    let mut problems = Vec::new();
    let mut unranked = BTreeSet::new();
    for f in &krate.files {
        if rank(&f.top).is_none() && unranked.insert(f.top.as_str()) {
            problems.push(format!(
                "{}: top-level module `{}` has no rank; add (\"{}\", N) to LAYERS in \
                 tests/layers.rs at the layer it belongs to",
                f.name, f.top, f.top
            ));
        }
    }
    // One line per file and upper module: the first reference, then where else it is used.
    let mut upward: BTreeMap<(usize, &str), Vec<(usize, &Ref)>> = BTreeMap::new();
    for (from, line, to, r) in krate.edges() {
        let (f, t) = (&krate.files[from], &krate.files[to]);
        if f.top == t.top {
            continue;
        }
        if let (Some(rf), Some(rt)) = (rank(&f.top), rank(&t.top))
            && rt > rf
        {
            upward
                .entry((from, t.top.as_str()))
                .or_default()
                .push((line, r));
        }
    }
    let mut upward: Vec<_> = upward.into_iter().collect();
    upward.sort_by_key(|((from, _), uses)| (*from, uses[0].0));
    for ((from, top), uses) in &upward {
        let f = &krate.files[*from];
        let target = if *top == "lib" {
            "crate (the root, lib.rs)".to_owned()
        } else {
            format!("crate::{top}")
        };
        let (line, r) = uses[0];
        let mut others: Vec<usize> = uses[1..]
            .iter()
            .map(|&(l, _)| l)
            .filter(|&l| l != line)
            .collect();
        others.dedup();
        let also = if others.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = others.iter().map(usize::to_string).collect();
            let s = if list.len() == 1 { "" } else { "s" };
            format!("; also used at line{s} {}", list.join(", "))
        };
        problems.push(format!(
            "{}:{line} imports {target} (rank {}) from {} (rank {}): layers point down only [{}{also}]",
            f.name,
            rank(top).unwrap_or_default(),
            f.top,
            rank(&f.top).unwrap_or_default(),
            r.display()
        ));
    }
    assert!(
        problems.is_empty(),
        "{} layer violation(s); ranks are in LAYERS (tests/layers.rs), higher is nearer the \
         listener; move the item down or invert the dependency:\n{}\n",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests

fn refs_of(src: &str, module: &[&str]) -> Vec<(usize, String)> {
    let module: Vec<String> = module.iter().map(|s| (*s).to_owned()).collect();
    crate_refs(src, &module, false)
        .into_iter()
        .map(|r| (r.line, r.path.join("::")))
        .collect()
}

fn pairs(expected: &[(usize, &str)]) -> Vec<(usize, String)> {
    expected.iter().map(|&(l, p)| (l, p.to_owned())).collect()
}

#[test]
fn parser_expands_nested_use_trees() {
    let src = "use crate::login::{self, send::{Job, Operator as Op}, tx::*};\n";
    assert_eq!(
        refs_of(src, &["gateway"]),
        pairs(&[
            (1, "login"),
            (1, "login::send::Job"),
            (1, "login::send::Operator"),
            (1, "login::tx"),
        ])
    );
}

#[test]
fn parser_reads_multi_line_uses_with_the_leaf_line() {
    let src = "pub(crate) use crate::{\n    config::{\n        Config,\n        Problem,\n    },\n    store,\n};\nuse std::sync::Arc;\n";
    assert_eq!(
        refs_of(src, &["server"]),
        pairs(&[(3, "config::Config"), (4, "config::Problem"), (6, "store")])
    );
}

#[test]
fn parser_finds_inline_paths_and_follows_aliases() {
    let src = "\
use crate::login;
fn f() -> crate::proxy::Identity {
    let job = login::send::Job::new();
    let v: Vec<crate::users::User> = Vec::new();
    ::metrics::counter!(crate::metrics::LOGINS).increment(1);
    self.session::<crate::clock::Manual>();
}
";
    assert_eq!(
        refs_of(src, &["gateway"]),
        pairs(&[
            (1, "login"),
            (2, "proxy::Identity"),
            (3, "login::send::Job::new"),
            (4, "users::User"),
            (5, "metrics::LOGINS"),
            (6, "clock::Manual"),
        ])
    );
}

#[test]
fn parser_ignores_comments_strings_and_chars() {
    let src = r####"
// use crate::a::B;
/// See [`crate::b::C`].
/* crate::c /* nested crate::d */ crate::e */
let s = "crate::f::G \" crate::g";
let r = r#"crate::h "quoted" crate::i"#;
let b = b"crate::j";
let q = '"'; let e = '\''; fn l<'a>(x: &'a str) {}
let real = crate::k::L;
"####;
    assert_eq!(refs_of(src, &["login"]), pairs(&[(9, "k::L")]));
}

#[test]
fn parser_skips_test_only_items() {
    let src = "\
use crate::a::A;
#[cfg(test)]
mod tests {
    use crate::b::B;
    fn f() { crate::c::C::new(); }
}
#[cfg(all(test, unix))]
fn helper() { crate::d::D }
#[cfg(not(test))]
use crate::e::E;
#[cfg(unix)]
fn g() { crate::f::F }
";
    assert_eq!(
        refs_of(src, &["x"]),
        pairs(&[(1, "a::A"), (10, "e::E"), (12, "f::F")])
    );
}

#[test]
fn parser_resolves_super_and_self_relative_to_the_file_module() {
    let src = "\
use super::{tx::LoginTx, LINK_PATH};
use self::inner::X;
fn f() { super::super::gateway::Gateway::new(); }
mod inner { pub use super::super::pin::Pin; }
";
    assert_eq!(
        refs_of(src, &["login", "send"]),
        pairs(&[
            (1, "login::tx::LoginTx"),
            (1, "login::LINK_PATH"),
            (2, "login::send::inner::X"),
            (3, "gateway::Gateway::new"),
            (4, "login::pin::Pin"),
        ])
    );
}

#[test]
fn parser_resolves_child_modules_but_not_extern_crates() {
    let src = "\
pub mod metrics;
mod send;
fn f() {
    metrics::install();
    ::metrics::counter!(\"x\");
    tokio::spawn(send::run());
}
";
    assert_eq!(
        refs_of(src, &[]),
        pairs(&[(4, "metrics::install"), (6, "send::run")])
    );
    assert_eq!(
        refs_of("fn f() { metrics::counter!(\"x\"); }", &["login"]),
        pairs(&[])
    );
}

#[test]
fn binary_root_reaches_the_library_by_name() {
    let src =
        "use otpgate::config::{self, LogFormat};\nfn f() { config::load(); otpgate::start(); }\n";
    let got: Vec<String> = crate_refs(src, &[], true)
        .into_iter()
        .map(|r| r.path.join("::"))
        .collect();
    assert_eq!(
        got,
        ["config", "config::LogFormat", "config::load", "start"]
    );
}

#[test]
fn references_map_to_the_most_specific_file() {
    let modules: BTreeMap<Vec<String>, usize> = [
        (vec![], 0),
        (vec!["login".to_owned()], 1),
        (vec!["login".to_owned(), "send".to_owned()], 2),
    ]
    .into_iter()
    .collect();
    let krate = Crate {
        files: Vec::new(),
        modules,
    };
    let at = |p: &str| {
        let segs: Vec<String> = p.split("::").map(str::to_owned).collect();
        krate.file_of(&segs)
    };
    assert_eq!(at("login::send::Job"), Some(2));
    assert_eq!(at("login::LOGIN_PATH"), Some(1));
    assert_eq!(at("Options"), Some(0));
}

#[test]
fn cycle_finder_reports_a_three_cycle() {
    // 0 -> 1 -> 2 -> 0, and 3 hangs off the cycle without being part of it.
    let adj = vec![vec![1], vec![2], vec![0, 3], vec![]];
    let found = cycles(&adj);
    assert_eq!(found, vec![vec![0, 1, 2]]);
    assert_eq!(example_cycle(&adj, &found[0], |_, _| false), vec![0, 1, 2]);
}

#[test]
fn cycle_example_prefers_the_requested_edge() {
    // Two cycles share node 0: 0 <-> 1 and 0 -> 2 -> 3 -> 0; ask for one through 2 -> 3.
    let adj = vec![vec![1, 2], vec![0], vec![3], vec![0]];
    let found = cycles(&adj);
    assert_eq!(found, vec![vec![0, 1, 2, 3]]);
    assert_eq!(example_cycle(&adj, &found[0], |_, _| true).len(), 2);
    assert_eq!(
        example_cycle(&adj, &found[0], |u, v| (u, v) == (2, 3)),
        vec![2, 3, 0]
    );
}

#[test]
fn cycle_finder_passes_a_dag() {
    // A diamond with a tail: every path points one way.
    let adj = vec![vec![1, 2], vec![3], vec![3], vec![4], vec![]];
    assert!(cycles(&adj).is_empty());
}
