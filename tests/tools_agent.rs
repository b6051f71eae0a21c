//! The tools an agent acts with: a workspace its file tools cannot leave, Python runs whose
//! files persist in that workspace, and tools served by an MCP server over stdio.
mod common;

use conclave::tools::{run_python_in, Limits, McpClient, McpServer, Status, Workspace};
use std::path::Path;
use std::time::{Duration, Instant};

fn workspace() -> (tempfile::TempDir, Workspace) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
    (tmp, ws)
}

fn refused(r: anyhow::Result<impl std::fmt::Debug>, rel: &str, why: &str) {
    let e = format!("{:#}", r.expect_err(&format!("{rel:?} was not refused")));
    assert!(e.contains(rel), "the error does not name {rel:?}: {e}");
    assert!(e.contains(why), "the error does not say {why:?}: {e}");
}

#[test]
fn paths_that_leave_the_workspace_are_refused() {
    let (tmp, ws) = workspace();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, ws.root().join("out_dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), ws.root().join("out_file")).unwrap();
    // A relative link out is as bad as an absolute one.
    std::os::unix::fs::symlink("../outside", ws.root().join("rel_out")).unwrap();

    refused(
        ws.read_file("../outside/secret.txt"),
        "../outside/secret.txt",
        "`..`",
    );
    refused(ws.read_file("a/../../x"), "a/../../x", "`..`");
    let abs = outside.join("secret.txt");
    let abs = abs.to_str().unwrap();
    refused(ws.read_file(abs), abs, "absolute");
    refused(ws.read_file("out_file"), "out_file", "symlink");
    refused(
        ws.read_file("out_dir/secret.txt"),
        "out_dir/secret.txt",
        "symlink",
    );
    refused(
        ws.read_file("rel_out/secret.txt"),
        "rel_out/secret.txt",
        "symlink",
    );
    refused(ws.list_dir("out_dir"), "out_dir", "symlink");
    refused(ws.read_file("a\0b"), "a\\0b", "NUL");
    // A new file whose parent is a link out, and a write through a link to a file outside.
    refused(
        ws.write_file("out_dir/new.txt", "x"),
        "out_dir/new.txt",
        "symlink",
    );
    refused(
        ws.write_file("out_dir/deep/new.txt", "x"),
        "out_dir/deep/new.txt",
        "symlink",
    );
    refused(ws.write_file("out_file", "pwned"), "out_file", "symlink");
    refused(ws.write_file("../escape.txt", "x"), "../escape.txt", "`..`");
    assert!(!outside.join("new.txt").exists());
    assert!(!outside.join("deep").exists());
    assert!(!tmp.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "secret"
    );
}

#[test]
fn paths_inside_the_workspace_work() {
    let (_tmp, ws) = workspace();
    assert_eq!(
        ws.write_file("out/deep/a.txt", "héllo\n").unwrap(),
        "wrote 7 bytes to out/deep/a.txt"
    );
    assert_eq!(ws.read_file("out/deep/a.txt").unwrap(), "héllo\n");
    // `..` that stays inside, `.`, and a link that stays inside are fine.
    assert_eq!(ws.read_file("out/x/../deep/./a.txt").unwrap(), "héllo\n");
    std::os::unix::fs::symlink("out/deep", ws.root().join("inside")).unwrap();
    assert_eq!(ws.read_file("inside/a.txt").unwrap(), "héllo\n");
    // A write replaces the whole file.
    ws.write_file("out/deep/a.txt", "hi").unwrap();
    assert_eq!(ws.read_file("out/deep/a.txt").unwrap(), "hi");
    ws.write_file("b.txt", "").unwrap();
    assert_eq!(ws.list_dir("").unwrap(), "b.txt\ninside\nout/");
    assert_eq!(ws.list_dir(".").unwrap(), ws.list_dir("").unwrap());
    assert_eq!(ws.list_dir("out").unwrap(), "deep/");
    assert_eq!(ws.list_dir("out/deep").unwrap(), "a.txt");
    refused(ws.read_file("missing.txt"), "missing.txt", "cannot read");
    refused(ws.read_file("out"), "out", "directory");
    // Over the size bound: refused, saying the bound.
    std::fs::write(ws.root().join("big.txt"), vec![b'x'; 300 * 1024]).unwrap();
    refused(ws.read_file("big.txt"), "big.txt", "256 KiB");
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        ..Limits::default()
    }
}

fn python(code: &str, dir: &Path) -> String {
    let o = run_python_in(code, dir, &limits()).unwrap();
    assert_eq!(o.status, Status::Ok, "{o:?}");
    o.stdout
}

#[test]
fn python_runs_share_the_workspace_with_the_file_tools() {
    let (_tmp, ws) = workspace();
    // A user file named like the sandbox's script survives.
    ws.write_file("main.py", "# mine").unwrap();
    python("open('state.txt', 'w').write('41')", ws.root());
    let out = python(
        "n = int(open('state.txt').read()) + 1\nopen('state.txt', 'w').write(str(n))\nprint(n)",
        ws.root(),
    );
    assert_eq!(out.trim(), "42");
    assert_eq!(ws.read_file("state.txt").unwrap(), "42");
    assert_eq!(ws.read_file("main.py").unwrap(), "# mine");
    assert_eq!(ws.list_dir("").unwrap(), "main.py\nstate.txt");

    // The file tools' files (in a new subdir too) are readable and writable by the code, and
    // modules written there can be imported.
    ws.write_file("lib/helper.py", "def twice(x):\n    return 2 * x\n")
        .unwrap();
    ws.write_file("data/in.txt", "21").unwrap();
    let out = python(
        "import sys\nsys.path.insert(0, 'lib')\nfrom helper import twice\n\
         v = twice(int(open('data/in.txt').read()))\n\
         open('data/in.txt', 'a').write('!')\nopen('data/out.txt', 'w').write(str(v))\nprint(v)",
        ws.root(),
    );
    assert_eq!(out.trim(), "42");
    assert_eq!(ws.read_file("data/out.txt").unwrap(), "42");
    assert_eq!(ws.read_file("data/in.txt").unwrap(), "21!");
    // And a file the code wrote can be replaced by the file tools.
    ws.write_file("data/out.txt", "7").unwrap();
    assert_eq!(
        python("print(open('data/out.txt').read())", ws.root()).trim(),
        "7"
    );
}

/// A server running the fixture in `mode`; `marker` (its last argument) finds its process.
fn server(mode: &str, marker: &str, timeout_s: f64) -> McpServer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_server.py");
    let args = vec![script.to_str().unwrap().into(), mode.into(), marker.into()];
    McpServer {
        name: "notes".into(),
        command: common::python_with_openai().to_str().unwrap().into(),
        args,
        env: Default::default(),
        timeout_s,
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        n += String::from_utf8_lossy(&cmd).contains(marker) as usize;
    }
    n
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn an_mcp_servers_tools_are_listed_and_called() {
    block_on(async {
        let marker = format!("marker-{}", std::process::id());
        let client = McpClient::start(&server("--normal", &marker, 30.0))
            .await
            .unwrap();
        assert_eq!(processes_with(&marker), 1);
        let mut names: Vec<&str> = client.tools().iter().map(|t| t.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["add", "lookup_code"]);
        let lookup = client
            .tools()
            .iter()
            .find(|t| t.name == "lookup_code")
            .unwrap();
        assert!(lookup
            .description
            .as_deref()
            .unwrap()
            .contains("secret code"));
        assert_eq!(lookup.input_schema["properties"]["name"]["type"], "string");

        let code = client
            .call("lookup_code", serde_json::json!({"name": "alpha"}))
            .await
            .unwrap();
        assert_eq!(code, "ZX-4471-QUOKKA");
        let sum = client
            .call("add", serde_json::json!({"a": 2, "b": 40}))
            .await;
        assert_eq!(sum.unwrap(), "42");

        // A tool's own error, a tool the server lacks, and bad arguments are errors that
        // name the server and the tool; the server goes on answering.
        let e = client
            .call("lookup_code", serde_json::json!({"name": "zeta"}))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`notes`") && e.contains("`lookup_code`"), "{e}");
        assert!(e.contains("no code is filed under 'zeta'"), "{e}");
        let e = client
            .call("rm_rf", serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no tool `rm_rf`"), "{e}");
        let e = client
            .call("add", serde_json::json!([1, 2]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
        let sum = client
            .call("add", serde_json::json!({"a": 1, "b": 1}))
            .await;
        assert_eq!(sum.unwrap(), "2");

        // Dropping the client kills the server.
        drop(client);
        let start = Instant::now();
        while processes_with(&marker) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the server outlived its client"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn a_dying_or_garbage_server_is_an_error_within_the_timeout() {
    block_on(async {
        for mode in ["--die-after-init", "--garbage"] {
            let client = McpClient::start(&server(mode, "x", 3.0)).await.unwrap();
            let start = Instant::now();
            let r = client
                .call("add", serde_json::json!({"a": 1, "b": 2}))
                .await;
            let took = start.elapsed();
            let e = format!("{:#}", r.expect_err(mode));
            eprintln!("{mode}: {e}");
            assert!(e.contains("`notes`") && e.contains("`add`"), "{mode}: {e}");
            assert!(took < Duration::from_secs(6), "{mode}: took {took:?}");
            let why = match mode {
                "--garbage" => "no answer within 3 s",
                _ => "the server is gone",
            };
            assert!(e.contains(why), "{mode}: {e}");
        }
    });
}

#[test]
fn a_server_that_cannot_start_is_a_clear_error() {
    block_on(async {
        let mut spec = server("--normal", "x", 5.0);
        spec.command = "/nonexistent/mcp-server".into();
        let e = format!("{:#}", McpClient::start(&spec).await.err().unwrap());
        assert!(e.contains("`notes`") && e.contains("cannot start"), "{e}");
        assert!(e.contains("/nonexistent/mcp-server"), "{e}");
        // A command that runs but is no MCP server: it exits, and what it said is shown.
        spec.command = "python3".into();
        spec.args = vec![
            "-c".into(),
            "import sys; sys.exit('no such database')".into(),
        ];
        let e = format!("{:#}", McpClient::start(&spec).await.err().unwrap());
        assert!(e.contains("`notes`"), "{e}");
        assert!(e.contains("no such database"), "{e}");
    });
}
