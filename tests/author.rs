//! The author's and operator's commands, as a user types them: `invoker run`, `invoker call`
//! (from stdin), `invoker apply`, `invoker init` (and building what it generates), and the
//! runtime image's files.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Daemon, lib, target_dir};

fn invoker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_invoker"));
    command.env("RUST_LOG", "warn");
    command
}

/// Runs `invoker ARGS` with `stdin` as its input.
fn with_stdin(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = invoker()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start invoker");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invoker-author-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn function(crate_name: &str, handler: &str) -> String {
    format!("{}?handler={handler}", lib(crate_name).display())
}

#[test]
fn run_calls_a_request_reply_function_per_line() {
    let out = with_stdin(
        &["run", "-f", &function("greeter", "hello")],
        &[],
        "Ada\nRiff\nGrace\n",
    );
    assert_eq!(stdout(&out), "Hello Ada\nHello Grace\n");
    assert!(stderr(&out).contains("error condition"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(2), "UNKNOWN: the function failed");

    let out = with_stdin(
        &["run", "-f", lib("rot13").to_str().unwrap()],
        &[],
        "Hello World\n",
    );
    assert_eq!(stdout(&out), "Uryyb Jbeyq\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn run_negotiates_like_the_server() {
    let out = with_stdin(
        &[
            "run",
            "--function",
            &function("greeter", "greet_json"),
            "--content-type",
            "application/json",
            "--accept",
            "application/json",
        ],
        &[],
        "{\"name\":\"Ada\"}\n",
    );
    assert_eq!(stdout(&out), "{\"greeting\":\"Hello Ada\"}\n");
    assert_eq!(out.status.code(), Some(0));

    let out = with_stdin(
        &[
            "run",
            "-f",
            &function("greeter", "double"),
            "--accept",
            "text/html",
        ],
        &[],
        "21\n",
    );
    assert!(stderr(&out).contains("Not Acceptable"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "INVALID_ARGUMENT");

    let out = with_stdin(
        &["run", "--ndjson", "-f", &function("greeter", "greet_json")],
        &[],
        "{\"payload\": {\"name\": \"Ada\"}, \"headers\": {\"Content-Type\": \"application/json\", \"correlationId\": \"7\"}}\n",
    );
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(line["payload"], "{\"greeting\":\"Hello Ada\"}");
    assert_eq!(line["headers"]["Content-Type"], "application/json");
    assert_eq!(line["headers"]["correlationId"], "7");

    let out = with_stdin(
        &["run", "--ndjson", "-f", &function("greeter", "hello")],
        &[],
        "not json\n",
    );
    assert!(
        stderr(&out).contains("not a JSON object"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn run_streams_outputs_as_inputs_arrive() {
    let mut child = invoker()
        .args(["run", "-f", &function("streams", "running_average")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    // Each average is printed before the next number is even written.
    for (number, average) in [("2", "2"), ("4", "3"), ("9", "5")] {
        writeln!(input, "{number}").unwrap();
        input.flush().unwrap();
        let line = output.next().expect("an output line").unwrap();
        assert_eq!(line, average);
    }
    drop(input);
    assert!(output.next().is_none(), "nothing after the input ended");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn run_ends_a_stream_at_its_error() {
    let out = with_stdin(
        &["run", "-f", &function("streams", "rle")],
        &[],
        "a\na\nb\nc\nc\nc\n",
    );
    assert_eq!(
        stdout(&out),
        "{\"word\":\"a\",\"count\":2}\n{\"word\":\"b\",\"count\":1}\n"
    );
    assert!(
        stderr(&out).contains("Too many occurrences of c"),
        "{}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_a_supplier_until_stopped() {
    let mut child = invoker()
        .args(["run", "-f", &function("streams", "ticker")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap()).lines();
    let ticks: Vec<String> = (0..3).map(|_| output.next().unwrap().unwrap()).collect();
    assert_eq!(ticks, ["0", "1", "2"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn run_reports_a_bad_function_clearly() {
    let out = with_stdin(&["run", "-f", "/nonexistent/libnope.so"], &[], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/libnope.so"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[tokio::test]
async fn call_reads_messages_from_stdin() {
    let daemon = Daemon::start(&function("streams", "running_average"));
    let addr = daemon.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        with_stdin(&["call", "--address", &addr], &[], "1\n2\n6\n")
    })
    .await
    .unwrap();
    assert_eq!(stdout(&out), "1\n1.5\n3\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn apply_validates_and_installs_an_invoker() {
    let home = scratch("apply");
    let envs = [("INVOKER_HOME", home.to_str().unwrap())];
    let resource = Path::new(env!("CARGO_MANIFEST_DIR")).join("invoker.yaml");

    let dry = invoker()
        .args(["apply", "--dry-run", "-f", resource.to_str().unwrap()])
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("kind: Invoker"), "{}", stdout(&dry));
    assert!(
        !home.join("invokers").exists(),
        "a dry run installed something"
    );

    let applied = invoker()
        .args(["apply", "-f", resource.to_str().unwrap()])
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    let installed = home.join("invokers").join("rust.yaml");
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        std::fs::read_to_string(&resource).unwrap()
    );

    let text = std::fs::read_to_string(&resource).unwrap();
    for (broken, message) in [
        (
            text.replace("kind: Invoker", "kind: Function"),
            "kind is 'Function', not Invoker",
        ),
        (
            text.replace("{{.ArtifactBase}}", "{{.ArtifactName}}"),
            "unknown placeholder '{{.ArtifactName}}'",
        ),
        (
            text.replace("  matchers:\n    - \"*.so\"\n", ""),
            "not a valid Invoker resource",
        ),
    ] {
        let file = home.join("broken.yaml");
        std::fs::write(&file, broken).unwrap();
        let out = invoker()
            .args(["apply", "-f", file.to_str().unwrap()])
            .envs(envs)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains(message),
            "{message}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn init_scaffolds_a_crate_that_builds_and_runs() {
    let dir = scratch("init");
    let home = dir.join("home");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join("sdk");
    let envs = [("INVOKER_HOME", home.to_str().unwrap())];

    let dry = invoker()
        .args([
            "init",
            "hello-fn",
            "--dry-run",
            "--sdk-path",
            sdk.to_str().unwrap(),
        ])
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let printed = stdout(&dry);
    for file in [
        "--- Cargo.toml",
        "--- src/lib.rs",
        "--- Dockerfile",
        "--- function.yaml",
    ] {
        assert!(printed.contains(file), "{file} missing:\n{printed}");
    }
    assert!(
        printed.contains("pub fn hello_fn(name: String) -> String"),
        "{printed}"
    );
    assert!(
        printed.contains("ENV FUNCTION_URI=file:///functions/libhello_fn.so?handler=hello_fn"),
        "{printed}"
    );
    assert!(printed.contains("protocol: grpc"), "{printed}");

    let project = dir.join("hello-fn");
    let created = invoker()
        .args([
            "init",
            "hello-fn",
            "--handler",
            "greet",
            "--sdk-path",
            sdk.to_str().unwrap(),
        ])
        .arg("--dir")
        .arg(&project)
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    for file in ["Cargo.toml", "src/lib.rs", "Dockerfile", "function.yaml"] {
        assert!(project.join(file).is_file(), "{file} was not written");
    }
    let again = invoker()
        .args(["init", "hello-fn", "--sdk-path", sdk.to_str().unwrap()])
        .arg("--dir")
        .arg(&project)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // Build what init generated, reusing this workspace's downloaded dependencies.
    let build_target = target_dir().join("scaffold");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &build_target)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the scaffold does not build:\n{}",
        stderr(&built)
    );
    let library = build_target.join("debug").join("libhello_fn.so");
    let out = with_stdin(&["run", "-f", library.to_str().unwrap()], &[], "Ada\n");
    assert_eq!(stdout(&out), "Hello Ada\n", "{}", stderr(&out));

    let bad = invoker().args(["init", "Hello World"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("is not a function name"),
        "{}",
        stderr(&bad)
    );
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

#[tokio::test]
async fn the_runtime_image_files_are_enough() {
    // What the Dockerfile's final stage holds: the invoker and the runtime's system libraries;
    // a function image adds its library under /functions.
    let root = scratch("rootfs");
    let binary = Path::new(env!("CARGO_BIN_EXE_invoker"));
    let function = lib("rot13");
    let mut libraries = Vec::new();
    for file in [binary, function.as_path()] {
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
    install(binary, "/usr/local/bin/invoker");
    install(&function, "/functions/librot13.so");
    for library in &libraries {
        install(library, library.to_str().unwrap());
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();

    // Only those files are visible: chroot when allowed (root), else the copied loader with
    // the system's library cache and default paths out of the way.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim() == "0")
        .unwrap_or(false);
    let mut command = if is_root {
        let mut c = Command::new("chroot");
        c.arg(&root).arg("/usr/local/bin/invoker");
        c
    } else {
        let loader = libraries
            .iter()
            .find(|l| l.to_string_lossy().contains("ld-linux"))
            .expect("a dynamic loader");
        let lib_dirs: Vec<String> = libraries
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
            .arg(root.join("usr/local/bin/invoker"));
        c
    };
    let function_path = if is_root {
        "/functions/librot13.so".to_owned()
    } else {
        root.join("functions/librot13.so").display().to_string()
    };
    let mut child = command
        .args(["serve", "--port", "0", "-f", &function_path])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOST", "127.0.0.1")
        .env(
            "TMPDIR",
            if is_root {
                "/tmp".into()
            } else {
                root.join("tmp")
            },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the invoker from the image's files");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    break addr.to_owned();
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
    let mut client = invoker::protocol::proto::function::message_function_client::MessageFunctionClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let outcome = common::call(&mut client, vec![common::msg("Hello World", &[])]).await;
    assert_eq!(outcome.texts(), ["Uryyb Jbeyq"]);
    child.kill().unwrap();
    child.wait().unwrap();
}
