//! Authoring a function, as a user types it: `invoker apply` (the local registry of Invoker
//! resources), `invoker init` (and building what it generates).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::{invoker, openwhisk_code, post_json, stderr, stdout, with_stdin};
use common::tools::lint_dockerfile;
use common::{Scratch, target_dir};
use serde_json::json;

fn scratch(name: &str) -> Scratch {
    common::scratch("scaffold", name)
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
        // riff renders handler.default and files with its own values only.
        (
            text.replace(
                "default: \"{{.FunctionName}}\"",
                "default: \"{{.CrateName}}\"",
            ),
            "spec.handler.default does not render",
        ),
        (
            text.replace("?handler={{.Handler}}", "?handler={{.CrateName}}"),
            "unknown placeholder '{{.CrateName}}'",
        ),
        (
            text.replace("invoker-sdk = {{.SdkDependency}}", "invoker-sdk = {{.Sdk}}"),
            "the template of .cargo/config.toml does not render",
        ),
        (
            text.replace(
                "handler: \"{{.CrateName}}\"",
                "handler: \"{{.FunctionName}}\"",
            ),
            "is 'sample-function', not a Rust function name",
        ),
        // `invoker init --openwhisk`'s templates are checked as the scaffold's are.
        (
            text.replace("zip -j {{.FunctionName}}.zip", "zip -j {{.Name}}.zip"),
            "unknown placeholder '{{.Name}}'",
        ),
    ] {
        assert_ne!(broken, text, "{message}: the replacement matched nothing");
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
        "--- .cargo/config.toml",
        "--- src/lib.rs",
        "--- Dockerfile",
        "--- .dockerignore",
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
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "Dockerfile",
        ".dockerignore",
        "function.yaml",
    ] {
        assert!(project.join(file).is_file(), "{file} was not written");
    }
    // invoker-sdk by version; a local build patches it to --sdk-path.
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        cargo_toml.contains("\ninvoker-sdk = \"0.1.0\"\n"),
        "{cargo_toml}"
    );
    let cargo_config = std::fs::read_to_string(project.join(".cargo/config.toml")).unwrap();
    assert!(
        cargo_config.contains(&format!(
            "[patch.crates-io]\ninvoker-sdk = {{ path = {:?} }}\n",
            sdk.display().to_string()
        )),
        "{cargo_config}"
    );
    let source = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    assert!(
        source.contains("pub fn greet(name: String) -> String"),
        "{source}"
    );
    let dockerfile = std::fs::read_to_string(project.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("ENV FUNCTION_URI=file:///functions/libhello_fn.so?handler=greet\n"),
        "{dockerfile}"
    );
    lint_dockerfile(&project.join("Dockerfile"));
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
    let library = library.to_str().unwrap();
    let out = with_stdin(&["run", "-f", library], &[], "Ada\n");
    assert_eq!(stdout(&out), "Hello Ada\n", "{}", stderr(&out));
    // The library exports the handler the Dockerfile names, and no other.
    let out = with_stdin(
        &["run", "-f", &format!("{library}?handler=greet")],
        &[],
        "Ada\n",
    );
    assert_eq!(stdout(&out), "Hello Ada\n", "{}", stderr(&out));
    let out = with_stdin(
        &["run", "-f", &format!("{library}?handler=hello_fn")],
        &[],
        "Ada\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("hello_fn"), "{}", stderr(&out));

    let bad = invoker().args(["init", "Hello World"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("is not a function name"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn init_scaffolds_an_openwhisk_action_that_builds_and_runs() {
    let dir = scratch("init-openwhisk");
    let home = dir.join("home");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join("sdk");
    let envs = [("INVOKER_HOME", home.to_str().unwrap())];

    let dry = invoker()
        .args(["init", "hello-ow", "--openwhisk", "--dry-run", "--sdk-path"])
        .arg(&sdk)
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let printed = stdout(&dry);
    let files: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("--- "))
        .collect();
    // An action's crate and the recipe of its zip; no riff Function resource.
    assert_eq!(
        files,
        [
            "Cargo.toml",
            ".cargo/config.toml",
            "src/lib.rs",
            "Dockerfile",
            ".dockerignore"
        ],
        "{printed}"
    );
    assert!(
        printed.contains("pub fn hello_ow(Json(params): Json<Value>) -> Json<Value>"),
        "{printed}"
    );

    let project = dir.join("hello-ow");
    let created = invoker()
        .args(["init", "hello-ow", "--openwhisk", "--handler", "greet"])
        .arg("--sdk-path")
        .arg(&sdk)
        .arg("--dir")
        .arg(&project)
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert!(
        stdout(&created)
            .contains("wsk action create hello-ow --docker IMAGE hello-ow.zip --main greet"),
        "{}",
        stdout(&created)
    );
    // The Dockerfile builds the zip `wsk action create` takes, on the runtime's Debian, and
    // exports nothing but it.
    let dockerfile = std::fs::read_to_string(project.join("Dockerfile")).unwrap();
    lint_dockerfile(&project.join("Dockerfile"));
    for line in [
        "FROM rust:1.95-bookworm AS build",
        "&& zip -j hello-ow.zip target/release/libhello_ow.so",
        "FROM scratch\nCOPY --from=build /function/hello-ow.zip /\n",
        "#   wsk action create hello-ow --docker IMAGE hello-ow.zip --main greet\n",
    ] {
        assert!(dockerfile.contains(line), "{line} missing:\n{dockerfile}");
    }
    // A small zip, for a quick /init at each cold start.
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        cargo_toml.contains("[profile.release]\nstrip = \"debuginfo\"\n"),
        "{cargo_toml}"
    );
    let ignored = std::fs::read_to_string(project.join(".dockerignore")).unwrap();
    assert!(ignored.contains("\ntarget/\n.cargo/\n"), "{ignored}");

    // Build it, reusing this workspace's downloaded dependencies, and serve its zip through
    // `invoker openwhisk` as OpenWhisk would: /init with the code, then /run.
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
    let library = build_target.join("debug").join("libhello_ow.so");
    let mut runtime = invoker()
        .args(["openwhisk", "--port", "0"])
        .env("HOST", "127.0.0.1")
        .env_remove("FUNCTION_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = BufReader::new(runtime.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
        .expect("invoker openwhisk listens");
    let init =
        json!({"value": {"code": openwhisk_code(&library), "binary": true, "main": "greet"}});
    assert_eq!(post_json(&addr, "/init", &init), (200, json!({"ok": true})));
    for (params, greeting) in [
        (json!({"name": "Ada"}), "Hello Ada"),
        (json!({}), "Hello stranger"),
    ] {
        assert_eq!(
            post_json(&addr, "/run", &json!({ "value": params })),
            (200, json!({ "greeting": greeting }))
        );
    }
    runtime.kill().unwrap();
    runtime.wait().unwrap();
}

#[test]
fn init_takes_its_templates_from_the_registry() {
    let dir = scratch("registry");
    let home = dir.join("home");
    let envs = [("INVOKER_HOME", home.to_str().unwrap())];
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join("sdk");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("invoker.yaml"))
        .unwrap();
    let init = |invoker_name: &str| {
        invoker()
            .args(["init", "hello-fn", "--dry-run", "--invoker", invoker_name])
            .arg("--sdk-path")
            .arg(&sdk)
            .envs(envs)
            .output()
            .unwrap()
    };

    // Nothing installed under that name yet.
    let missing = init("rust-marked");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no invoker 'rust-marked' is installed"),
        "{}",
        stderr(&missing)
    );

    // A modified copy, applied under another name, is what init renders.
    let marked = text
        .replace("name: rust\n", "name: rust-marked\n")
        // The riff Dockerfile's FROM (the first; the OpenWhisk scaffold's comes later).
        .replacen(
            "FROM projectriff/rust-function-invoker:",
            "# marker: from the registry\n        FROM projectriff/rust-function-invoker:",
            1,
        )
        .replace(
            "//! The function `{{.Handler}}`",
            "//! marker: scaffolded from the registry\n          //! The function `{{.Handler}}`",
        );
    assert_eq!(marked.matches("marker:").count(), 2, "{marked}");
    let file = dir.join("marked.yaml");
    std::fs::write(&file, &marked).unwrap();
    let applied = invoker()
        .args(["apply", "-f", file.to_str().unwrap()])
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    assert!(home.join("invokers/rust-marked.yaml").is_file());

    let out = init("rust-marked");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    let dockerfile = printed
        .split("--- Dockerfile\n")
        .nth(1)
        .and_then(|rest| rest.split("\n--- ").next())
        .expect("a Dockerfile");
    assert!(
        dockerfile.contains("# marker: from the registry\nFROM projectriff/"),
        "{printed}"
    );
    assert!(
        printed.contains("//! marker: scaffolded from the registry\n//! The function `hello_fn`"),
        "{printed}"
    );
    // The built-in invoker is unchanged.
    let out = init("rust");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("marker:"), "{}", stdout(&out));

    // An invoker applied as `rust` replaces the built-in one for a plain `invoker init`.
    std::fs::write(&file, marked.replace("name: rust-marked\n", "name: rust\n")).unwrap();
    let applied = invoker()
        .args(["apply", "-f", file.to_str().unwrap()])
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    let out = invoker()
        .args(["init", "hello-fn", "--dry-run", "--sdk-path"])
        .arg(&sdk)
        .envs(envs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("marker:").count(),
        2,
        "{}",
        stdout(&out)
    );
}

#[test]
fn apply_refuses_a_deeply_nested_document() {
    // yaml_serde's scanner is quadratic in this nesting: parsed, it would take minutes.
    let dir = scratch("deep");
    let n = 100_000;
    let file = dir.join("deep.yaml");
    let resource =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("invoker.yaml"))
            .unwrap();
    let deep = format!("{resource}  extra: {}{}\n", "{a: ".repeat(n), "}".repeat(n));
    std::fs::write(&file, deep).unwrap();
    let out = invoker()
        .args(["apply", "--dry-run", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = resource.lines().count() + 1;
    assert_eq!(
        stderr(&out),
        format!(
            "invoker: {} is not applied: line {line} nests collections more than 64 deep; an Invoker resource is refused deeper than that\n",
            file.display()
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn init_refuses_an_invoker_name_that_is_a_path() {
    // `--invoker` names a file in the registry; a path must not reach a resource elsewhere.
    let dir = scratch("invoker-path");
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("invokers")).unwrap();
    let resource = Path::new(env!("CARGO_MANIFEST_DIR")).join("invoker.yaml");
    // A valid resource outside the registry, where `../outside` and an absolute path lead.
    std::fs::copy(&resource, home.join("outside.yaml")).unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates")
        .join("sdk");
    let absolute = home.join("outside");
    for name in [
        "../outside",
        absolute.to_str().unwrap(),
        "rust/..",
        "..\\outside",
    ] {
        let out = invoker()
            .args(["init", "hello-fn", "--dry-run", "--invoker", name])
            .arg("--sdk-path")
            .arg(&sdk)
            .env("INVOKER_HOME", &home)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        assert_eq!(
            stderr(&out),
            format!(
                "invoker: '{name}' is not an invoker name: a name is a DNS label (lowercase letters, digits, '-'), with no path separator\n"
            )
        );
    }
}
