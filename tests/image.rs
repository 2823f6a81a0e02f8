//! The images, checked without a Docker engine: the runtime image's files are enough to serve
//! a function, a function image builds from the directory `invoker init` made, and the
//! Kubernetes deployment fits the invoker's drain and start-up.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cli::{invoker, openwhisk_code, post_json, stderr, stdout};
use common::tools::lint_dockerfile;
use common::{Daemon, Scratch, lib};

fn scratch(name: &str) -> Scratch {
    common::scratch("image", name)
}

#[test]
fn a_scratch_directory_is_removed_when_the_test_ends() {
    let dir = scratch("guard");
    let path = dir.to_path_buf();
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("nested/file"), "x").unwrap();
    drop(dir);
    assert!(!path.exists(), "{} is left behind", path.display());
    let panicked = std::panic::catch_unwind(|| {
        let dir = scratch("guard-panic");
        std::fs::write(dir.join("file"), "x").unwrap();
        panic!("a failing test");
    });
    assert!(panicked.is_err());
    let left =
        std::env::temp_dir().join(format!("invoker-image-guard-panic-{}", std::process::id()));
    assert!(!left.exists(), "{} is left behind", left.display());
}

/// The libraries the runtime stage (debian:bookworm-slim) provides; the invoker and function
/// libraries may need nothing else.
const RUNTIME_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
];

/// The shared libraries `ldd` says `binary` needs: (name, resolved path).
fn needed(binary: &Path) -> Vec<(String, Option<PathBuf>)> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    assert!(
        out.status.success(),
        "ldd {}: {}",
        binary.display(),
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let name = line.split_whitespace().next()?;
            let path = line
                .split("=>")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'))
                .or_else(|| name.starts_with('/').then_some(name))
                .map(PathBuf::from);
            let name = Path::new(name).file_name()?.to_string_lossy().into_owned();
            Some((name, path))
        })
        .collect()
}

/// One stage of a Dockerfile: its base image and instructions (keyword in capitals, arguments),
/// with continuation lines joined and comments dropped.
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &str) -> impl Iterator<Item = &'a str> {
        let keyword = keyword.to_owned();
        self.instructions
            .iter()
            .filter(move |(k, _)| *k == keyword)
            .map(|(_, args)| args.as_str())
    }

    fn one<'a>(&'a self, keyword: &str) -> &'a str {
        let all: Vec<&str> = self.all(keyword).collect();
        assert_eq!(
            all.len(),
            1,
            "one {keyword} in the stage FROM {}",
            self.from
        );
        all[0]
    }

    /// `ENV` pairs, in order (`ENV K=V K2=V2` or `ENV K V`).
    fn env(&self) -> Vec<(String, String)> {
        let unquote = |v: &str| v.trim_matches('"').to_owned();
        let mut env = Vec::new();
        for args in self.all("ENV") {
            if let Some((key, value)) = args.split_once(char::is_whitespace)
                && !key.contains('=')
            {
                env.push((key.to_owned(), unquote(value.trim())));
                continue;
            }
            for pair in args.split_whitespace() {
                let (key, value) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.push((key.to_owned(), unquote(value)));
            }
        }
        env
    }

    /// `COPY [--from=STAGE] SRC... DEST`: (stage, sources, destination).
    fn copies(&self) -> Vec<(Option<String>, Vec<String>, String)> {
        self.all("COPY")
            .map(|args| {
                let mut from = None;
                let mut paths = Vec::new();
                for word in args.split_whitespace() {
                    if let Some(stage) = word.strip_prefix("--from=") {
                        from = Some(stage.to_owned());
                    } else if !word.starts_with("--") {
                        paths.push(word.to_owned());
                    }
                }
                let dest = paths.pop().expect("COPY has a destination");
                (from, paths, dest)
            })
            .collect()
    }
}

/// The image a stage is built on: its FROM, through the stages it names.
fn base_image<'a>(stages: &'a [Stage], stage: &'a Stage) -> &'a str {
    match stages
        .iter()
        .find(|s| s.name.as_deref() == Some(stage.from.as_str()))
    {
        Some(earlier) if !std::ptr::eq(earlier, stage) => base_image(stages, earlier),
        _ => &stage.from,
    }
}

fn parse_dockerfile(dockerfile: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (current.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_owned());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            stages.push(Stage {
                from: words[0].to_owned(),
                name: (words.len() == 3 && words[1].eq_ignore_ascii_case("as"))
                    .then(|| words[2].to_owned()),
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instructions
                .push((keyword, args));
        }
        current.clear();
    }
    stages
}

/// The value of `flag` given to `command` in a shell line (`--flag VALUE` or `--flag=VALUE`).
fn flag_of(run: &str, command: &str, flag: &str) -> Option<String> {
    run.split("&&")
        .map(|part| part.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&command))?
        .windows(2)
        .find_map(|pair| {
            if pair[0] == flag {
                Some(pair[1].to_owned())
            } else {
                pair[0]
                    .strip_prefix(flag)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            }
        })
}

/// A directory holding only the files of an image built on the base image: the invoker where
/// the final stage's COPY puts it, the libraries of debian:bookworm-slim it and the other files
/// need (asserted to be no more than that image has), those files, and a /tmp writable by all.
struct ImageFiles {
    root: Scratch,
    libraries: Vec<PathBuf>,
}

impl ImageFiles {
    /// Lays out the invoker at `binary_dest` and `files` (path here, path in the image).
    fn lay_out(name: &str, binary_dest: &str, files: &[(&Path, &str)]) -> ImageFiles {
        let root = scratch(name);
        let binary = Path::new(env!("CARGO_BIN_EXE_invoker"));
        let mut libraries = Vec::new();
        for file in std::iter::once(binary).chain(files.iter().map(|(from, _)| *from)) {
            for (name, path) in needed(file) {
                assert!(
                    RUNTIME_LIBRARIES.contains(&name.as_str()),
                    "{} needs {name}, which debian:bookworm-slim does not have",
                    file.display()
                );
                libraries.extend(path);
            }
        }
        let install = |from: &Path, to: &str| {
            let target = root.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(from, &target).unwrap();
        };
        install(binary, binary_dest);
        for (from, to) in files {
            install(from, to);
        }
        for library in &libraries {
            install(library, library.to_str().unwrap());
        }
        // Writable by all, as in debian:bookworm-slim (and the emptyDir of deploy/kubernetes);
        // everything else belongs to root, so the image's user cannot write it.
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ImageFiles { root, libraries }
    }

    /// Runs the image's `entrypoint` (exec form) as `user` with `args` appended and the image's
    /// `env`, `overrides` on top, seeing only these files; waits for its `listening on` line and
    /// returns the process and the port it printed.
    fn start(
        &self,
        user: &str,
        entrypoint: &[String],
        args: &[&str],
        mut env: Vec<(String, String)>,
        overrides: &[(&str, &str)],
    ) -> (std::process::Child, String) {
        let root = &*self.root;
        // The ENTRYPOINT's program, found on the image's PATH.
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
        let program = if entrypoint[0].starts_with('/') {
            entrypoint[0].clone()
        } else {
            path.split(':')
                .map(|dir| format!("{dir}/{}", entrypoint[0]))
                .find(|p| root.join(p.trim_start_matches('/')).is_file())
                .unwrap_or_else(|| {
                    panic!(
                        "ENTRYPOINT {} is not on the image's PATH ({path})",
                        entrypoint[0]
                    )
                })
        };

        // Only those files are visible: as root, chroot into them and run as the image's USER;
        // otherwise the copied loader with the system's library cache and default paths out of
        // the way (and paths inside the directory).
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| stdout(&o).trim() == "0")
            .unwrap_or(false);
        let mut command = if is_root {
            let mut c = Command::new("chroot");
            c.arg(format!("--userspec={user}")).arg(root).arg(&program);
            c
        } else {
            let loader = self
                .libraries
                .iter()
                .find(|l| l.to_string_lossy().contains("ld-linux"))
                .expect("a dynamic loader");
            let lib_dirs: Vec<String> = self
                .libraries
                .iter()
                .filter_map(|l| l.parent())
                .map(|d| {
                    root.join(d.strip_prefix("/").unwrap())
                        .display()
                        .to_string()
                })
                .collect();
            let mut c = Command::new(root.join(loader.strip_prefix("/").unwrap()));
            c.args(["--inhibit-cache", "--library-path", &lib_dirs.join(":")])
                .arg(root.join(program.trim_start_matches('/')));
            for (key, value) in &mut env {
                if key == "FUNCTION_URI" {
                    *value = value.replacen("file://", &format!("file://{}", root.display()), 1);
                }
            }
            env.push(("TMPDIR".into(), root.join("tmp").display().to_string()));
            c
        };
        let mut child = command
            .args(&entrypoint[1..])
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the invoker from the image's files");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.rsplit(':').next().unwrap().to_owned();
                    }
                }
                _ => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "the invoker did not start from the image's files: {}",
                        stderr(&out)
                    );
                }
            }
        };
        // Keep reading, so that a full pipe never blocks the daemon.
        std::thread::spawn(move || for _ in lines {});
        (child, port)
    }
}

#[tokio::test]
async fn the_runtime_image_files_are_enough() {
    // The files of a function image, as the repository's Dockerfile (the base image) and
    // invoker.yaml's Dockerfile template (the function image on top of it) describe them.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(manifest.join("Dockerfile")).unwrap();
    let stages = parse_dockerfile(&dockerfile);
    let image = stages.last().expect("a FROM");
    assert_eq!(
        image.from, "debian:bookworm-slim",
        "RUNTIME_LIBRARIES lists what debian:bookworm-slim has: update it with the base image"
    );

    // The invoker: a COPY of the final stage, from the build stage's cargo output. (The other
    // is the SDK, for function images: a_function_image_builds_from_its_own_directory.)
    let copies = image.copies();
    assert_eq!(
        copies.len(),
        2,
        "the final stage copies the invoker and the SDK"
    );
    let (from, sources, binary_dest) = copies
        .iter()
        .find(|(_, sources, _)| sources.iter().any(|s| s.ends_with("/invoker")))
        .expect("the final stage copies the invoker");
    let build = stages
        .iter()
        .find(|s| s.name.is_some() && s.name == *from)
        .expect("the final stage copies from a named build stage");
    let build_run = build
        .all("RUN")
        .find(|run| run.contains("-p invoker"))
        .expect("the build stage builds the invoker");
    assert!(build_run.contains("cargo build --release"), "{build_run}");
    let built = Path::new(build.one("WORKDIR")).join("target/release/invoker");
    assert_eq!(
        sources,
        &[built.display().to_string()],
        "the final stage copies what the build stage builds"
    );
    let binary_dest = if binary_dest.ends_with('/') {
        format!("{binary_dest}invoker")
    } else {
        binary_dest.clone()
    };

    // The user: a fixed uid and gid that the image creates, group first.
    let user = image.one("USER");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let run = image.one("RUN");
    assert_eq!(
        flag_of(run, "groupadd", "--gid").as_deref(),
        Some(gid),
        "{run}"
    );
    assert_eq!(
        flag_of(run, "useradd", "--uid").as_deref(),
        Some(uid),
        "{run}"
    );
    assert_eq!(
        flag_of(run, "useradd", "--gid").as_deref(),
        Some(gid),
        "{run}"
    );
    assert!(
        run.find("groupadd") < run.find("useradd"),
        "the group exists before the user: {run}"
    );
    // CA certificates, for a function that calls TLS services.
    assert!(
        run.split("&&").any(|command| {
            let words: Vec<&str> = command.split_whitespace().collect();
            words.starts_with(&["apt-get", "install"]) && words.contains(&"ca-certificates")
        }),
        "the runtime installs ca-certificates: {run}"
    );

    let mut env = image.env();
    let value = |env: &[(String, String)], key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the image sets no {key}"))
    };
    assert_eq!(value(&env, "HOST"), "0.0.0.0");
    let exposed: Vec<&str> = image.one("EXPOSE").split_whitespace().collect();
    assert_eq!(
        exposed,
        [value(&env, "GRPC_PORT"), value(&env, "METRICS_PORT")],
        "the image exposes its gRPC and metrics ports"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(image.one("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint[1..], ["serve"]);

    // The function image: invoker.yaml's Dockerfile for rot13, as riff would render it.
    let resource = invoker::cmd::scaffold::Invoker::parse(
        &std::fs::read_to_string(manifest.join("invoker.yaml")).unwrap(),
    )
    .unwrap();
    let mut vars = invoker::cmd::scaffold::Vars::new("rot13", &resource.spec.version, "");
    vars.handler = "encode".into();
    let template = resource
        .spec
        .files
        .iter()
        .find(|f| f.path == "Dockerfile")
        .unwrap();
    let function_dockerfile = invoker::cmd::scaffold::render(
        &template.template,
        &vars,
        invoker::cmd::scaffold::Scope::Riff,
    )
    .unwrap();
    // Its final stage: the base image plus the library its build stage compiles (that build:
    // a_function_image_builds_from_its_own_directory).
    let function_stages = parse_dockerfile(&function_dockerfile);
    let function_image = function_stages.last().expect("a FROM");
    assert!(
        base_image(&function_stages, function_image)
            .starts_with("projectriff/rust-function-invoker:"),
        "{function_dockerfile}"
    );
    let function_copies = function_image.copies();
    assert_eq!(function_copies.len(), 1, "{function_dockerfile}");
    let (function_from, function_sources, function_dest) = &function_copies[0];
    let function_build = function_stages
        .iter()
        .find(|s| s.name.is_some() && s.name == *function_from)
        .expect("the function image copies the library from its build stage");
    let built_library = Path::new(function_build.one("WORKDIR")).join(&vars.artifact);
    assert_eq!(function_sources, &[built_library.display().to_string()]);
    env.extend(function_image.env());

    // Lay the files out in a directory: the invoker where the Dockerfile puts it, the
    // libraries of debian:bookworm-slim it and the function need, the function library.
    let function = lib("rot13");
    let files = ImageFiles::lay_out(
        "rootfs",
        &binary_dest,
        &[(function.as_path(), function_dest.as_str())],
    );
    // Any free ports instead of the image's, which another test may hold.
    let (mut child, port) = files.start(
        user,
        &entrypoint,
        &[],
        env,
        &[("GRPC_PORT", "0"), ("METRICS_PORT", "0")],
    );
    let mut client =
        invoker::proto::function::message_function_client::MessageFunctionClient::connect(format!(
            "http://127.0.0.1:{port}"
        ))
        .await
        .unwrap();
    let outcome = common::call(&mut client, vec![common::msg("Hello World", &[])]).await;
    assert_eq!(outcome.texts(), ["Uryyb Jbeyq"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_openwhisk_image_serves_an_action() {
    // Dockerfile.openwhisk: the base image (the tag the repository's Dockerfile says to build)
    // running `invoker openwhisk` on every interface, port 8080, where OpenWhisk sends /init
    // and /run. Its files are the base image's: the invoker the final stage copies, run here
    // with the OpenWhisk image's ENTRYPOINT and environment, takes an action's zip at /init.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    lint_dockerfile(&manifest.join("Dockerfile.openwhisk"));
    let base_dockerfile = std::fs::read_to_string(manifest.join("Dockerfile")).unwrap();
    let base_stages = parse_dockerfile(&base_dockerfile);
    let base = base_stages.last().expect("a FROM");
    let dockerfile = std::fs::read_to_string(manifest.join("Dockerfile.openwhisk")).unwrap();
    let stages = parse_dockerfile(&dockerfile);
    assert_eq!(stages.len(), 1, "{dockerfile}");
    let image = &stages[0];
    assert!(
        image.from.starts_with("projectriff/rust-function-invoker:")
            && base_dockerfile.contains(&format!("docker build -t {} .", image.from)),
        "the OpenWhisk image is FROM {}, which the base image's Dockerfile does not build",
        image.from
    );
    assert_eq!(image.copies().len(), 0, "the base image has all it needs");

    let mut env = base.env();
    env.extend(image.env());
    let host = env.iter().rev().find(|(k, _)| k == "HOST").map(|(_, v)| v);
    assert_eq!(host.map(String::as_str), Some("0.0.0.0"));
    let entrypoint: Vec<String> =
        serde_json::from_str(image.one("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, ["invoker", "openwhisk"]);
    assert_eq!(image.all("CMD").count(), 0, "no CMD to override the port");
    // 8080, exposed, and the port `invoker openwhisk` listens on when not told otherwise.
    assert_eq!(image.one("EXPOSE"), "8080");
    let help = invoker().args(["openwhisk", "--help"]).output().unwrap();
    let port_help = stdout(&help)
        .split("--port <PORT>")
        .nth(1)
        .and_then(|rest| rest.split("\n  -").next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no --port in:\n{}", stdout(&help)));
    assert!(port_help.contains("[default: 8080]"), "{port_help}");

    // The base image's files: the invoker where its final stage copies it, and its USER.
    let (_, _, binary_dest) = base
        .copies()
        .into_iter()
        .find(|(_, sources, _)| sources.iter().any(|s| s.ends_with("/invoker")))
        .expect("the base image copies the invoker");
    let binary_dest = match binary_dest.ends_with('/') {
        true => format!("{binary_dest}invoker"),
        false => binary_dest,
    };
    // The action arrives at /init: what it links against must be in the image too.
    let action = lib("openwhisk");
    for (name, _) in needed(&action) {
        assert!(
            RUNTIME_LIBRARIES.contains(&name.as_str()),
            "libopenwhisk.so needs {name}, which debian:bookworm-slim does not have"
        );
    }
    let files = ImageFiles::lay_out("openwhisk-rootfs", &binary_dest, &[]);
    // The image's command and environment; only the port is a free one (8080 may be taken).
    let (mut child, port) = files.start(base.one("USER"), &entrypoint, &["--port", "0"], env, &[]);

    // `wsk action create hello --docker IMAGE hello.zip --main greet`, then an invocation.
    let code = openwhisk_code(&action);
    let init = serde_json::json!({"value": {"code": code, "binary": true, "main": "greet"}});
    assert_eq!(
        post_json(&format!("127.0.0.1:{port}"), "/init", &init),
        (200, serde_json::json!({"ok": true}))
    );
    let run = serde_json::json!({"value": {"name": "Ada"}, "activation_id": "a1"});
    assert_eq!(
        post_json(&format!("127.0.0.1:{port}"), "/run", &run),
        (200, serde_json::json!({"greeting": "Hello Ada"}))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The patterns of a build context's `.dockerignore`, each as path components. Only what this
/// repository's files use is supported (names, one `*` within a name, `**`), and asserted.
fn dockerignore(context: &Path) -> Vec<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(context.join(".dockerignore")) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|pattern| {
            let parts: Vec<String> = pattern
                .trim_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect();
            assert!(
                !pattern.contains(['!', '?', '[', '\\'])
                    && parts
                        .iter()
                        .all(|p| p == "**" || p.matches('*').count() <= 1),
                "this test does not support the .dockerignore pattern {pattern}"
            );
            parts
        })
        .collect()
}

/// Whether `pattern` (path components) matches all of `path`.
fn glob(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|i| glob(rest, &path[i..])),
        Some((first, rest)) => path.split_first().is_some_and(|(name, path_rest)| {
            let matches = match first.split_once('*') {
                None => first == name,
                Some((prefix, suffix)) => {
                    name.len() >= prefix.len() + suffix.len()
                        && name.starts_with(prefix)
                        && name.ends_with(suffix)
                }
            };
            matches && glob(rest, path_rest)
        }),
    }
}

/// Copies `from` to `to` as a COPY does: a file to that path, a directory's contents into
/// that directory; an entry (relative to `from`) that `ignore` matches is left out, with all a
/// directory holds.
fn copy_as_docker(from: &Path, to: &Path, ignore: &[Vec<String>]) {
    fn walk(from: &Path, to: &Path, rel: &mut Vec<String>, ignore: &[Vec<String>]) {
        if !from.is_dir() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap_or_else(|e| panic!("COPY {}: {e}", from.display()));
            return;
        }
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let name = entry.unwrap().file_name();
            rel.push(name.to_string_lossy().into_owned());
            if !ignore.iter().any(|pattern| glob(pattern, rel)) {
                walk(&from.join(&name), &to.join(&name), rel, ignore);
            }
            rel.pop();
        }
    }
    walk(from, to, &mut Vec::new(), ignore);
}

/// What `docker build` does with a Dockerfile's stages, without a Docker engine, as far as the
/// image tests need it. Each stage's file system is a directory: in the stage whose directory
/// is D, the container path `/a/b` is `D/a/b`. A stage FROM an earlier stage, or FROM an image
/// in `images`, builds in that stage's (or image's) directory; a stage FROM any other image
/// (rust:…, debian:…) starts from an empty one under `fs`, and runs this machine's programs
/// (sh, cargo) in place of the image's. WORKDIR and COPY work in those directories (COPY
/// from the build context `context` leaves out what its .dockerignore names); RUN runs with
/// `sh -c` in the WORKDIR's directory, each of its words that begins with `/` (a container
/// path) moved under the stage's directory, with only PATH, HOME and the Rust toolchain's
/// and proxies' variables of this environment. Instructions `skip` accepts are not done.
/// Returns each stage's directory by name, and the last stage's directory and ENV.
fn docker_build(
    dockerfile: &str,
    context: &Path,
    fs: &Path,
    images: &std::collections::HashMap<String, PathBuf>,
    skip: impl Fn(&str, &str) -> bool,
) -> (
    std::collections::HashMap<String, PathBuf>,
    PathBuf,
    Vec<(String, String)>,
) {
    let stages = parse_dockerfile(dockerfile);
    let mut named: std::collections::HashMap<String, PathBuf> = Default::default();
    let mut last = None;
    for (i, stage) in stages.iter().enumerate() {
        let root = named
            .get(&stage.from)
            .or_else(|| images.get(&stage.from))
            .cloned()
            .unwrap_or_else(|| fs.join(stage.name.clone().unwrap_or_else(|| format!("{i}"))));
        std::fs::create_dir_all(&root).unwrap();
        let inside = |path: &str| root.join(path.trim_start_matches('/'));
        let mut workdir = "/".to_owned();
        for (keyword, args) in &stage.instructions {
            if skip(keyword, args) {
                continue;
            }
            match keyword.as_str() {
                "WORKDIR" => {
                    workdir = Path::new(&workdir).join(args).display().to_string();
                    std::fs::create_dir_all(inside(&workdir)).unwrap();
                }
                "COPY" => {
                    let (from, sources, dest) = Stage {
                        from: String::new(),
                        name: None,
                        instructions: vec![(keyword.clone(), args.clone())],
                    }
                    .copies()
                    .remove(0);
                    let dest = Path::new(&workdir).join(&dest);
                    for source in sources {
                        let (origin, ignore) = match &from {
                            Some(stage) => {
                                let dir = &named[stage];
                                (dir.join(source.trim_start_matches('/')), Vec::new())
                            }
                            None => (context.join(&source), dockerignore(context)),
                        };
                        let to = if !origin.is_dir() && args.ends_with('/') {
                            dest.join(origin.file_name().unwrap())
                        } else {
                            dest.clone()
                        };
                        copy_as_docker(&origin, &inside(to.to_str().unwrap()), &ignore);
                    }
                }
                "RUN" => {
                    let script: Vec<String> = args
                        .split(' ')
                        .map(|word| match word.starts_with('/') {
                            true => inside(word).display().to_string(),
                            false => word.to_owned(),
                        })
                        .collect();
                    let mut command = Command::new("sh");
                    command
                        .arg("-c")
                        .arg(script.join(" "))
                        .current_dir(inside(&workdir))
                        .env_clear();
                    for (key, value) in std::env::vars_os() {
                        let key_text = key.to_string_lossy().to_ascii_lowercase();
                        if ["path", "home", "cargo_home"].contains(&key_text.as_str())
                            || key_text.starts_with("rustup_")
                            || key_text.ends_with("_proxy")
                        {
                            command.env(key, value);
                        }
                    }
                    let out = command.output().unwrap();
                    assert!(
                        out.status.success(),
                        "RUN {args}\nfailed ({}):\n{}{}",
                        out.status,
                        stdout(&out),
                        stderr(&out)
                    );
                }
                _ => {}
            }
        }
        if let Some(name) = &stage.name {
            named.insert(name.clone(), root.clone());
        }
        last = Some((root, stage.env()));
    }
    let (root, env) = last.expect("a FROM");
    (named, root, env)
}

#[tokio::test]
async fn a_function_image_builds_from_its_own_directory() {
    // `docker build .` in a directory made by `invoker init`, on the invoker base image built
    // from this checkout, the stages run as `docker_build` says: each stage's `/a/b` is
    // <scratch>/fs/STAGE/a/b. It builds the SDK and the function in release mode, in a fresh
    // target directory (the build stage's /function/target): a minute or two.
    let dir = scratch("image");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fs = dir.join("fs");

    // The base image, from this checkout (its build context): its build stage's `cargo package`
    // RUN, which writes the SDK's crates to /sdk, and its final stage's COPY of them. Not the
    // release build of the invoker and its COPY (this test serves with its own binary, and
    // the_runtime_image_files_are_enough checks the runtime's files), nor the apt-get and
    // useradd RUN of the runtime.
    let base_dockerfile = std::fs::read_to_string(manifest.join("Dockerfile")).unwrap();
    let base_stages = parse_dockerfile(&base_dockerfile);
    let runtime_release = base_stages.last().unwrap().from.clone();
    let (_, base, _) = docker_build(
        &base_dockerfile,
        manifest,
        &fs.join("base"),
        &Default::default(),
        |keyword, args| match keyword {
            "RUN" => !args.contains("cargo package"),
            "COPY" => args.contains("target/release/invoker"),
            _ => false,
        },
    );

    // A new function, scaffolded with the default SDK path (this checkout's crates/sdk), which
    // its .cargo/config.toml gives local builds, and the image build must not see.
    let function = dir.join("hello-image");
    let created = invoker()
        .args(["init", "hello-image", "--dir"])
        .arg(&function)
        .env("INVOKER_HOME", dir.join("home"))
        .output()
        .unwrap();
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    let local = std::fs::read_to_string(function.join(".cargo/config.toml"))
        .unwrap_or_else(|e| panic!("init wrote no .cargo/config.toml for local builds: {e}"));
    assert!(local.contains(&*manifest.to_string_lossy()), "{local}");

    // Its image, FROM the base image: the tag the base image's Dockerfile says to build, and
    // a build stage on the runtime's Debian release (debian:bookworm-slim, rust:1.95-bookworm).
    let dockerfile = std::fs::read_to_string(function.join("Dockerfile")).unwrap();
    lint_dockerfile(&function.join("Dockerfile"));
    let stages = parse_dockerfile(&dockerfile);
    let base_tag = base_image(&stages, stages.last().unwrap()).to_owned();
    assert!(
        base_dockerfile.contains(&format!("docker build -t {base_tag} .")),
        "the function image is FROM {base_tag}, which the base image's Dockerfile does not build"
    );
    let build = stages
        .iter()
        .find(|s| s.from != base_tag && s.all("RUN").any(|run| run.contains("cargo build")))
        .unwrap_or_else(|| panic!("no stage builds the function:\n{dockerfile}"));
    let release = runtime_release
        .strip_prefix("debian:")
        .and_then(|tag| tag.split('-').next())
        .unwrap();
    assert!(
        build.from.ends_with(&format!("-{release}")),
        "the build stage is FROM {}, not Debian {release} like the runtime",
        build.from
    );
    let images = std::collections::HashMap::from([(base_tag, base)]);
    let (named, image, env) = docker_build(&dockerfile, &function, &fs, &images, |_, _| false);
    let build_dir = &named[build.name.as_ref().expect("the build stage is named")];

    // Built from the SDK in the base image, not from this checkout, which .dockerignore kept
    // out: invoker-sdk's sources, as its dep-info lists them.
    assert!(!build_dir.join("function/.cargo").exists());
    let deps = std::fs::read_dir(build_dir.join("function/target/release/deps")).unwrap();
    let sdk_info = deps
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("invoker_sdk-") && name.ends_with(".d")
        })
        .expect("invoker-sdk was built");
    let sdk_info = std::fs::read_to_string(sdk_info).unwrap();
    let sources: Vec<&str> = sdk_info
        .split_whitespace()
        .filter(|word| word.ends_with(".rs"))
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| s.ends_with("/invoker-sdk/src/lib.rs")),
        "{sdk_info}"
    );
    for source in sources {
        assert!(
            Path::new(source).starts_with(build_dir),
            "invoker-sdk was built from {source}, not the build stage's files"
        );
    }

    // The library the image has, served by the invoker with the image's FUNCTION_URI.
    let uri = env
        .iter()
        .find(|(key, _)| key == "FUNCTION_URI")
        .map(|(_, value)| value.clone())
        .expect("the image sets FUNCTION_URI");
    let path = uri
        .strip_prefix("file://")
        .and_then(|rest| rest.split('?').next())
        .unwrap();
    assert!(
        image.join(path.trim_start_matches('/')).is_file(),
        "{path} is not in the image"
    );
    let uri = uri.replacen("file://", &format!("file://{}", image.display()), 1);
    let daemon = Daemon::start(&uri);
    let mut client = daemon.client().await;
    let outcome = common::call(&mut client, vec![common::msg("Ada", &[])]).await;
    assert_eq!(outcome.texts(), ["Hello Ada"]);
}

#[test]
fn the_deployment_pauses_before_the_drain_and_waits_for_a_slow_start() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(manifest.join("deploy/kubernetes/deployment.yaml")).unwrap();
    let deployment: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = |key: &str| {
        container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|e| e["name"].as_str() == Some(key))
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    let dockerfile = std::fs::read_to_string(manifest.join("Dockerfile")).unwrap();
    let image_env = parse_dockerfile(&dockerfile).last().unwrap().env();
    let image = |key: &str| {
        image_env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the image sets no {key}"))
    };

    // SIGTERM only after a pause, so the endpoints drop the pod before it refuses calls.
    let command: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop exec command")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command.len(), 2, "{command:?}");
    assert_eq!(
        command[0], "sleep",
        "coreutils' sleep is in debian:bookworm-slim"
    );
    let pause: u64 = command[1].parse().unwrap();
    assert!(
        pause >= 3,
        "{pause} s is too short for the endpoints to be updated"
    );

    // The pause, the drain, and the second the invoker may take after it, within the period.
    let grace: u64 = env("GRACE_PERIOD")
        .unwrap_or_else(|| image("GRACE_PERIOD"))
        .parse()
        .unwrap();
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        period > pause + grace,
        "terminationGracePeriodSeconds {period} < preStop {pause} + grace {grace} + 1"
    );

    // A startup probe on the health service, so a slow init hook is not killed by liveness.
    let startup = &container["startupProbe"];
    assert!(startup["grpc"]["port"].as_u64().is_some(), "{startup:?}");
    let patience = startup["periodSeconds"].as_u64().unwrap_or(10)
        * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(patience >= 60, "the startup probe waits only {patience} s");

    // The metrics port: the image's METRICS_PORT, declared and named.
    let metrics_port = env("METRICS_PORT").unwrap_or_else(|| image("METRICS_PORT"));
    let declared = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(
        declared["containerPort"].as_u64().map(|p| p.to_string()),
        Some(metrics_port)
    );
}
