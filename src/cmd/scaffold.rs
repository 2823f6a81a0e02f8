//! The author's and the platform's side of packaging: the riff `Invoker` resource
//! (`invoker.yaml`), a local registry of installed invokers (`invoker apply`), and scaffolding
//! a function crate from an invoker's templates (`invoker init`).
//!
//! Templates use riff's placeholder syntax, `{{.Name}}` (spaces allowed inside the braces).
//! Which names a template may use depends on who renders it ([`Scope`]): riff renders
//! `handler.default`, `files` and `functionTemplate` with its own values only, so those may use
//! nothing else; the `scaffold` extension, which only `invoker init` reads, has two more. Any
//! other name is an error when the resource is applied, so a template that would not render
//! (here or in riff) never reaches the registry.

mod nesting;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::Exit;
use crate::cli::{ApplyArgs, InitArgs};

/// The invoker resource this binary ships with (the repository's `invoker.yaml`).
pub const EMBEDDED: &str = include_str!("../../invoker.yaml");

/// A riff `Invoker` resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoker {
    /// `projectriff.io/v1alpha1`.
    pub api_version: String,
    /// `Invoker`.
    pub kind: String,
    /// Its name.
    pub metadata: Metadata,
    /// What it does.
    pub spec: InvokerSpec,
}

/// Resource metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    /// The invoker's name, by which `invoker init --invoker` finds it.
    pub name: String,
}

/// The invoker's spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokerSpec {
    /// The invoker's version (the base image tag).
    pub version: String,
    /// Globs of the artifacts it builds functions from.
    pub matchers: Vec<String>,
    /// The handler's default and what it means.
    pub handler: Handler,
    /// The template of the riff Function resource.
    pub function_template: yaml_serde::Value,
    /// Files written into a function's directory (the Dockerfile).
    pub files: Vec<File>,
    /// What `invoker init` scaffolds (an extension riff ignores).
    #[serde(default, skip_serializing_if = "Scaffold::is_empty")]
    pub scaffold: Scaffold,
    /// Help text.
    #[serde(default)]
    pub doc: String,
}

/// The handler setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handler {
    /// Template of the default handler.
    pub default: String,
    /// What the handler names.
    pub description: String,
}

/// The `scaffold` extension: a new function crate, for `invoker init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scaffold {
    /// Template of the default handler of a scaffolded crate (default: `handler.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Files written into the new crate, before `files`.
    #[serde(default)]
    pub files: Vec<File>,
    /// What `invoker init --openwhisk` writes instead of `files` and the riff files: an
    /// OpenWhisk action's crate and the recipe of its zip (the handler as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openwhisk: Option<OpenWhiskScaffold>,
}

impl Scaffold {
    fn is_empty(&self) -> bool {
        self.handler.is_none() && self.files.is_empty() && self.openwhisk.is_none()
    }
}

/// The `scaffold.openwhisk` extension: an OpenWhisk action, for `invoker init --openwhisk`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenWhiskScaffold {
    /// Files written into the new crate (scaffold placeholders allowed).
    pub files: Vec<File>,
}

/// A templated file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct File {
    /// Where it goes, relative to the function's directory.
    pub path: String,
    /// Its template.
    pub template: String,
}

/// Who renders a template, which decides the placeholders it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// riff (and `invoker init`): `handler.default`, `files`, `functionTemplate`. Only riff's
    /// own values: FunctionName, Handler, Artifact, ArtifactBase, InvokerVersion.
    Riff,
    /// Only `invoker init`: the `scaffold` extension. riff's values, CrateName, SdkDependency.
    Scaffold,
    /// riff's command help: `doc`. Process, Command, Result.
    Doc,
}

/// riff's template values (riff-cli renders invoker templates with these and no others).
const RIFF_NAMES: &[&str] = &[
    "FunctionName",
    "Handler",
    "Artifact",
    "ArtifactBase",
    "InvokerVersion",
];
/// What the `scaffold` extension adds.
const SCAFFOLD_NAMES: &[&str] = &["CrateName", "SdkDependency"];
/// The values riff renders an invoker's `doc` with, into the help of its commands.
const DOC_NAMES: &[&str] = &["Process", "Command", "Result"];

impl Scope {
    fn allows(self, name: &str) -> bool {
        match self {
            Scope::Riff => RIFF_NAMES.contains(&name),
            Scope::Scaffold => RIFF_NAMES.contains(&name) || SCAFFOLD_NAMES.contains(&name),
            Scope::Doc => DOC_NAMES.contains(&name),
        }
    }

    fn known(self) -> String {
        let names: Vec<&str> = match self {
            Scope::Riff => RIFF_NAMES.to_vec(),
            Scope::Scaffold => [RIFF_NAMES, SCAFFOLD_NAMES].concat(),
            Scope::Doc => DOC_NAMES.to_vec(),
        };
        let list: Vec<String> = names.iter().map(|n| format!(".{n}")).collect();
        let mut known = format!("known: {}", list.join(", "));
        if self == Scope::Riff {
            known.push_str(
                "; riff renders this template, so .CrateName and .SdkDependency belong only in scaffold",
            );
        }
        known
    }
}

/// The values templates can use.
#[derive(Debug, Clone)]
pub struct Vars {
    /// The function (and package) name, e.g. `hello-world`.
    pub function_name: String,
    /// The name as a Rust identifier, e.g. `hello_world` (scaffold only).
    pub crate_name: String,
    /// The handler.
    pub handler: String,
    /// The built library, relative to the function's directory.
    pub artifact: String,
    /// The library's file name.
    pub artifact_base: String,
    /// The invoker's version.
    pub invoker_version: String,
    /// The local `invoker-sdk`, as a Cargo dependency value (scaffold only): what a local
    /// build patches `invoker-sdk` to (an image build uses the invoker image's).
    pub sdk_dependency: String,
}

impl Vars {
    /// The values for a function called `name` (handler still to be chosen).
    pub fn new(name: &str, invoker_version: &str, sdk_dependency: &str) -> Vars {
        let crate_name = name.replace('-', "_");
        Vars {
            function_name: name.to_owned(),
            handler: String::new(),
            artifact: format!("target/release/lib{crate_name}.so"),
            artifact_base: format!("lib{crate_name}.so"),
            crate_name,
            invoker_version: invoker_version.to_owned(),
            sdk_dependency: sdk_dependency.to_owned(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "FunctionName" => &self.function_name,
            "CrateName" => &self.crate_name,
            "Handler" => &self.handler,
            "Artifact" => &self.artifact,
            "ArtifactBase" => &self.artifact_base,
            "InvokerVersion" => &self.invoker_version,
            "SdkDependency" => &self.sdk_dependency,
            _ => return None,
        })
    }
}

/// Renders a template for `scope`: each `{{.Name}}` becomes its value.
pub fn render(template: &str, vars: &Vars, scope: Scope) -> anyhow::Result<String> {
    render_with(template, scope, |name| vars.get(name))
}

/// Renders `doc` as riff would, for the help of its `create` command.
fn render_doc(doc: &str) -> anyhow::Result<String> {
    render_with(doc, Scope::Doc, |name| match name {
        "Process" => Some("Create"),
        "Command" => Some("function create rust"),
        "Result" => Some("create the function"),
        _ => None,
    })
}

fn render_with<'a>(
    template: &str,
    scope: Scope,
    value: impl Fn(&str) -> Option<&'a str>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("a '{{{{' without '}}}}' in: {}", line_of(rest, start)))?;
        let inner = after[..end].trim();
        let value = inner
            .strip_prefix('.')
            .filter(|name| scope.allows(name))
            .and_then(&value)
            .with_context(|| {
                format!("unknown placeholder '{{{{{inner}}}}}' ({})", scope.known())
            })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every string inside a YAML value, with where it is.
fn strings_in<'v>(value: &'v yaml_serde::Value, at: String, out: &mut Vec<(String, &'v str)>) {
    match value {
        yaml_serde::Value::String(s) => out.push((at, s)),
        yaml_serde::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, format!("{at}[{i}]"), out);
            }
        }
        yaml_serde::Value::Mapping(map) => {
            for (key, item) in map {
                let key = key
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{key:?}"));
                strings_in(item, format!("{at}.{key}"), out);
            }
        }
        yaml_serde::Value::Tagged(tagged) => strings_in(&tagged.value, at, out),
        _ => {}
    }
}

/// An invoker's name: a DNS label (lowercase letters, digits, '-'; at most 63), so also a file
/// name in the registry, with no path separator or `..`.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` can name a Rust function.
fn is_rust_ident(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn line_of(text: &str, at: usize) -> &str {
    text[at..].lines().next().unwrap_or_default()
}

/// A file's path must stay inside the function's directory.
fn check_path(file: &File) -> anyhow::Result<()> {
    if file.path.is_empty()
        || Path::new(&file.path).is_absolute()
        || file.path.split('/').any(|part| part == "..")
    {
        bail!(
            "file path '{}' must be relative, inside the function's directory",
            file.path
        );
    }
    Ok(())
}

impl Invoker {
    /// Parses and validates a resource.
    pub fn parse(text: &str) -> anyhow::Result<Invoker> {
        // Before yaml_serde, whose scanner is quadratic in the nesting (see `nesting`).
        if let Err(deep) = nesting::check(text, nesting::MAX_DEPTH) {
            bail!(
                "line {} nests collections more than {} deep; an Invoker resource is refused deeper than that",
                deep.line,
                nesting::MAX_DEPTH
            );
        }
        let invoker: Invoker =
            yaml_serde::from_str(text).context("not a valid Invoker resource")?;
        invoker.validate()?;
        Ok(invoker)
    }

    /// Checks the resource's shape, and that every template renders for a sample function.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.api_version != "projectriff.io/v1alpha1" {
            bail!(
                "apiVersion is '{}'; an Invoker is projectriff.io/v1alpha1",
                self.api_version
            );
        }
        if self.kind != "Invoker" {
            bail!("kind is '{}', not Invoker", self.kind);
        }
        let name = &self.metadata.name;
        if !is_dns_label(name) {
            bail!("metadata.name '{name}' is not a DNS label (lowercase letters, digits, '-')");
        }
        let spec = &self.spec;
        if spec.version.trim().is_empty() {
            bail!("spec.version is empty");
        }
        if spec.matchers.is_empty() || spec.matchers.iter().any(|m| m.trim().is_empty()) {
            bail!("spec.matchers must list the artifacts it builds from, like \"*.so\"");
        }
        if spec.handler.description.trim().is_empty() {
            bail!("spec.handler.description is empty");
        }
        let protocol = spec
            .function_template
            .get("spec")
            .and_then(|s| s.get("protocol"))
            .and_then(|p| p.as_str());
        if protocol != Some("grpc") {
            bail!(
                "spec.functionTemplate.spec.protocol must be grpc, the protocol this invoker serves"
            );
        }
        if !spec.files.iter().any(|f| f.path == "Dockerfile") {
            bail!("spec.files has no Dockerfile");
        }
        // What riff renders, with riff's values only, for a sample function.
        let mut vars = Vars::new("sample-function", &spec.version, "{ path = \"sdk\" }");
        vars.handler = render(&spec.handler.default, &vars, Scope::Riff)
            .context("spec.handler.default does not render")?;
        let mut strings = Vec::new();
        strings_in(
            &spec.function_template,
            "spec.functionTemplate".into(),
            &mut strings,
        );
        for (at, text) in strings {
            render(text, &vars, Scope::Riff).with_context(|| format!("{at} does not render"))?;
        }
        render_doc(&spec.doc).context("spec.doc does not render")?;
        for file in &spec.files {
            check_path(file)?;
            render(&file.template, &vars, Scope::Riff)
                .with_context(|| format!("the template of {} does not render", file.path))?;
        }
        // What `invoker init` renders, with its own handler.
        let mut vars = Vars::new("sample-function", &spec.version, "{ path = \"sdk\" }");
        vars.handler = self
            .scaffold_handler(&vars)
            .context("spec.scaffold.handler does not render")?;
        if !spec.scaffold.files.is_empty() && !is_rust_ident(&vars.handler) {
            bail!(
                "the scaffold's default handler for a function called sample-function is '{}', not a Rust function name",
                vars.handler
            );
        }
        let openwhisk = spec.scaffold.openwhisk.iter().flat_map(|o| &o.files);
        for file in spec.scaffold.files.iter().chain(openwhisk) {
            check_path(file)?;
            render(&file.template, &vars, Scope::Scaffold)
                .with_context(|| format!("the template of {} does not render", file.path))?;
        }
        Ok(())
    }

    /// The default handler of a scaffolded crate: `scaffold.handler`, else `handler.default`.
    fn scaffold_handler(&self, vars: &Vars) -> anyhow::Result<String> {
        match &self.spec.scaffold.handler {
            Some(handler) => render(handler, vars, Scope::Scaffold),
            None => render(&self.spec.handler.default, vars, Scope::Riff),
        }
    }

    /// The riff Function resource for a function `name` built into `image`.
    pub fn function_resource(&self, name: &str, image: &str) -> anyhow::Result<String> {
        let mut spec = self
            .spec
            .function_template
            .get("spec")
            .cloned()
            .unwrap_or(yaml_serde::Value::Mapping(Default::default()));
        if let yaml_serde::Value::Mapping(map) = &mut spec {
            map.insert("input".into(), name.into());
            let mut container = yaml_serde::Mapping::new();
            container.insert("image".into(), image.into());
            map.insert("container".into(), yaml_serde::Value::Mapping(container));
        }
        let mut metadata = yaml_serde::Mapping::new();
        metadata.insert("name".into(), name.into());
        let mut function = yaml_serde::Mapping::new();
        function.insert("apiVersion".into(), "projectriff.io/v1alpha1".into());
        function.insert("kind".into(), "Function".into());
        function.insert("metadata".into(), yaml_serde::Value::Mapping(metadata));
        function.insert("spec".into(), spec);
        Ok(yaml_serde::to_string(&function)?)
    }
}

/// `invoker apply -f FILE [--dry-run]`.
pub fn apply(args: ApplyArgs) -> anyhow::Result<Exit> {
    install(&args.file, args.dry_run).map(|()| Exit::SUCCESS)
}

/// Validates the Invoker resource in `file` and installs it in the registry, or (`dry_run`)
/// prints it.
fn install(file: &Path, dry_run: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let invoker =
        Invoker::parse(&text).with_context(|| format!("{} is not applied", file.display()))?;
    let name = &invoker.metadata.name;
    if dry_run {
        print!("{}", yaml_serde::to_string(&invoker)?);
        eprintln!("invoker '{name}' is valid (dry run: nothing installed)");
        return Ok(());
    }
    let dir = crate::env::registry_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "invoker '{name}' {} applied to {}",
        invoker.spec.version,
        path.display()
    );
    Ok(())
}

/// The installed invoker called `name`, or the embedded one if that is its name.
pub fn installed(name: &str) -> anyhow::Result<Invoker> {
    // The name becomes a file name in the registry: `../x` or `/etc/x` must not reach outside.
    if !is_dns_label(name) {
        bail!(
            "'{name}' is not an invoker name: a name is a DNS label (lowercase letters, digits, '-'), with no path separator"
        );
    }
    let path = crate::env::registry_dir()?.join(format!("{name}.yaml"));
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Invoker::parse(&text).with_context(|| format!("{} is not valid", path.display()));
    }
    let embedded = Invoker::parse(EMBEDDED)?;
    if embedded.metadata.name == name {
        return Ok(embedded);
    }
    bail!(
        "no invoker '{name}' is installed (in {}); install it with `invoker apply -f invoker.yaml`",
        path.display()
    )
}

/// What `invoker init` needs.
#[derive(Debug)]
pub struct InitOptions {
    /// The function's name.
    pub name: String,
    /// Which installed invoker's templates to use.
    pub invoker: String,
    /// The handler (default: the invoker's default).
    pub handler: Option<String>,
    /// Where to create the crate (default: `./NAME`).
    pub dir: Option<PathBuf>,
    /// Path of the invoker-sdk crate.
    pub sdk_path: Option<PathBuf>,
    /// The image the Function resource names (default: `NAME:0.1.0`).
    pub image: Option<String>,
    /// Print the files instead of writing them.
    pub dry_run: bool,
    /// An OpenWhisk action (`scaffold.openwhisk`) instead of a riff function.
    pub openwhisk: bool,
}

impl From<InitArgs> for InitOptions {
    fn from(args: InitArgs) -> InitOptions {
        InitOptions {
            name: args.name,
            invoker: args.invoker,
            handler: args.handler,
            dir: args.dir,
            sdk_path: args.sdk_path,
            image: args.image,
            dry_run: args.dry_run,
            openwhisk: args.openwhisk,
        }
    }
}

/// The SDK this binary was built beside, when it is still there.
fn default_sdk_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join("sdk");
    path.join("Cargo.toml").is_file().then_some(path)
}

/// Renders the files of a new function crate: (relative path, content), in order; and the
/// handler they name.
pub fn scaffold(options: &InitOptions) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let name = &options.name;
    let valid_name = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        bail!(
            "'{name}' is not a function name: start with a lowercase letter; use lowercase letters, digits, '-' and '_'"
        );
    }
    let invoker = installed(&options.invoker)?;
    let sdk = match &options.sdk_path {
        Some(path) => path.clone(),
        None => default_sdk_path().context(
            "cannot find invoker-sdk: pass --sdk-path with the crates/sdk directory of an invoker checkout",
        )?,
    };
    let sdk = std::path::absolute(&sdk)?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "{} is not the invoker-sdk crate (no Cargo.toml)",
            sdk.display()
        );
    }
    let sdk_dependency = format!("{{ path = {} }}", toml_string(&sdk.display().to_string()));
    let mut vars = Vars::new(name, &invoker.spec.version, &sdk_dependency);
    vars.handler = match &options.handler {
        Some(handler) => handler.clone(),
        None => invoker.scaffold_handler(&vars)?,
    };
    if !is_rust_ident(&vars.handler) {
        bail!(
            "the handler '{}' is not a Rust function name: pass --handler",
            vars.handler
        );
    }
    let mut files = Vec::new();
    if options.openwhisk {
        let openwhisk = invoker.spec.scaffold.openwhisk.as_ref().with_context(|| {
            format!(
                "the invoker '{}' has no OpenWhisk scaffold (spec.scaffold.openwhisk)",
                invoker.metadata.name
            )
        })?;
        for file in &openwhisk.files {
            files.push((
                file.path.clone(),
                render(&file.template, &vars, Scope::Scaffold)?,
            ));
        }
        return Ok((files, vars.handler));
    }
    for file in &invoker.spec.scaffold.files {
        files.push((
            file.path.clone(),
            render(&file.template, &vars, Scope::Scaffold)?,
        ));
    }
    for file in &invoker.spec.files {
        files.push((
            file.path.clone(),
            render(&file.template, &vars, Scope::Riff)?,
        ));
    }
    let image = options
        .image
        .clone()
        .unwrap_or_else(|| format!("{name}:0.1.0"));
    files.push((
        "function.yaml".to_owned(),
        invoker.function_resource(name, &image)?,
    ));
    Ok((files, vars.handler))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `invoker init NAME`.
pub fn init(args: InitArgs) -> anyhow::Result<Exit> {
    create(InitOptions::from(args)).map(|()| Exit::SUCCESS)
}

/// Creates the function crate `options` describe, or (`dry_run`) prints its files.
fn create(options: InitOptions) -> anyhow::Result<()> {
    let (files, handler) = scaffold(&options)?;
    if options.dry_run {
        for (path, content) in &files {
            println!("--- {path}");
            print!("{content}");
            if !content.ends_with('\n') {
                println!();
            }
        }
        return Ok(());
    }
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&options.name));
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            dir.display()
        );
    }
    let mut written = BTreeMap::new();
    for (path, content) in &files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, content)
            .with_context(|| format!("cannot write {}", target.display()))?;
        written.insert(path.clone(), target);
    }
    println!("created {} with:", dir.display());
    for path in written.keys() {
        println!("  {path}");
    }
    if options.openwhisk {
        let name = &options.name;
        println!(
            "next: cd {} && docker build --output . .   # {name}.zip, the library built on the runtime's Debian",
            dir.display()
        );
        println!(
            "then: wsk action create {name} --docker IMAGE {name}.zip --main {handler}   # IMAGE: Dockerfile.openwhisk's (README, \"On OpenWhisk\")"
        );
        return Ok(());
    }
    println!(
        "next: cd {} && cargo build --release && invoker run -f target/release/lib{}.so",
        dir.display(),
        options.name.replace('-', "_")
    );
    let image = options
        .image
        .clone()
        .unwrap_or_else(|| format!("{}:0.1.0", options.name));
    println!(
        "image: docker build -t {image} {} (on the invoker base image: README, \"Packaging\")",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut vars = Vars::new("hello-world", "0.1.0", "{ path = \"/sdk\" }");
        vars.handler = "hello".into();
        vars
    }

    #[test]
    fn renders_placeholders() {
        let text = render(
            "FROM x:{{.InvokerVersion}}\nCOPY {{ .Artifact }} /f/{{.ArtifactBase}}",
            &vars(),
            Scope::Riff,
        )
        .unwrap();
        assert_eq!(
            text,
            "FROM x:0.1.0\nCOPY target/release/libhello_world.so /f/libhello_world.so"
        );
        let text = render(
            "{{.CrateName}} = {{.SdkDependency}}",
            &vars(),
            Scope::Scaffold,
        )
        .unwrap();
        assert_eq!(text, "hello_world = { path = \"/sdk\" }");
    }

    #[test]
    fn unknown_or_broken_placeholders_are_errors() {
        let e = render("{{.Nope}}", &vars(), Scope::Scaffold).unwrap_err();
        assert!(
            e.to_string().contains("unknown placeholder '{{.Nope}}'"),
            "{e}"
        );
        assert!(render("{{.Handler", &vars(), Scope::Riff).is_err());
        assert!(render("{{Handler}}", &vars(), Scope::Riff).is_err());
    }

    #[test]
    fn riff_templates_use_only_riff_values() {
        for name in ["CrateName", "SdkDependency"] {
            let e = render(&format!("{{{{.{name}}}}}"), &vars(), Scope::Riff).unwrap_err();
            assert!(e.to_string().contains("belong only in scaffold"), "{e}");
        }
        for name in RIFF_NAMES {
            render(&format!("{{{{.{name}}}}}"), &vars(), Scope::Riff).unwrap();
        }
        assert!(render_doc("{{.Process}} it; riff {{.Command}} to {{.Result}}").is_ok());
        assert!(render_doc("{{.FunctionName}}").is_err());
    }

    #[test]
    fn the_embedded_invoker_is_valid() {
        let invoker = Invoker::parse(EMBEDDED).unwrap();
        assert_eq!(invoker.metadata.name, "rust");
        assert_eq!(invoker.spec.matchers, ["*.so"]);
        // The scaffold asks for invoker-sdk at the invoker's version: the image of that version
        // carries the SDK of the workspace's version, which is this crate's.
        assert_eq!(invoker.spec.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn validation_names_the_problem() {
        let wrong_kind = EMBEDDED.replace("kind: Invoker", "kind: Function");
        let e = Invoker::parse(&wrong_kind).unwrap_err();
        assert!(e.to_string().contains("kind is 'Function'"), "{e}");
        let wrong_protocol = EMBEDDED.replace("protocol: grpc", "protocol: http");
        let e = Invoker::parse(&wrong_protocol).unwrap_err();
        assert!(e.to_string().contains("protocol must be grpc"), "{e}");
        let templated = EMBEDDED.replace(
            "protocol: grpc",
            "protocol: grpc\n      x: \"{{.CrateName}}\"",
        );
        let e = format!("{:#}", Invoker::parse(&templated).unwrap_err());
        assert!(
            e.contains("spec.functionTemplate.spec.x does not render"),
            "{e}"
        );
    }

    #[test]
    fn the_scaffold_handler_is_a_rust_name_and_riffs_is_the_function_name() {
        let invoker = Invoker::parse(EMBEDDED).unwrap();
        let vars = vars();
        assert_eq!(invoker.scaffold_handler(&vars).unwrap(), "hello_world");
        assert_eq!(
            render(&invoker.spec.handler.default, &vars, Scope::Riff).unwrap(),
            "hello-world"
        );
    }
}
