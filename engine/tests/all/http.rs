//! `work-engine serve` as a client sees it: the real binary on 127.0.0.1,
//! a real SQLite file, requests over HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use work_test_artifacts as guests;

/// A running server on its own data directory, called with the
/// operator's key (unless it serves with `--insecure-no-auth`).
pub struct Served {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
    /// The operator's key of the data directory.
    pub operator_key: Option<String>,
}

/// The `work-engine` binary with `args` on the data directory `data`, no
/// other `WORK_ENGINE_*` setting: (exit code, stdout, stderr).
pub fn work_engine(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_work-engine"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WORK_ENGINE_") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .env("WORK_ENGINE_DATA_DIR", data)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A key made on the data directory with `keys create ARGS --json`.
pub fn create_key(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["keys", "create", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = work_engine(data, &all, &[]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The operator's key of `data`, made on first use and kept beside it (a
/// server restarted on the directory is called with the same key).
fn operator_key(data: &Path) -> String {
    let kept = data.join("test-operator.key");
    if let Ok(key) = std::fs::read_to_string(&kept) {
        return key;
    }
    let key = create_key(data, &["--operator"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&kept, &key).unwrap();
    key
}

/// A client that sends `key` with every request.
pub fn client_with(key: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Served {
    /// Starts `work-engine serve` on `data` with `extra` flags and waits
    /// until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        let mut flags = vec!["--addr", "127.0.0.1:0"];
        flags.extend_from_slice(extra);
        Self::start_with(data, &flags, &[])
    }

    /// [`Served::start`] with `env` set (and every other `WORK_ENGINE_*`
    /// setting cleared).
    pub fn start_with(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let operator_key = (!extra.contains(&"--insecure-no-auth")).then(|| {
            std::fs::create_dir_all(data).unwrap();
            operator_key(data)
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_work-engine"));
        for (key, _) in std::env::vars() {
            if key.starts_with("WORK_ENGINE_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["serve"])
            .args(extra)
            .envs(env.iter().copied())
            .env("WORK_ENGINE_DATA_DIR", data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self {
            child,
            url,
            http: client_with(operator_key.as_deref()),
            operator_key,
        }
    }

    /// The `work-engine` binary with `args`, through this server, with the
    /// operator's key (and no data directory to fall back on).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let key = self.operator_key.as_deref().unwrap_or_default();
        work_engine(
            Path::new("/nonexistent/work-engine-data"),
            args,
            &[("WORK_ENGINE_URL", &self.url), ("WORK_ENGINE_API_KEY", key)],
        )
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.at(path)).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(
            self.http
                .post(self.at(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Posts `body` as raw bytes with `content_type`.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.at(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    pub async fn register(&self, wasm: &str) -> Value {
        let (status, manifest) = self
            .post_raw(
                "/v1/tools",
                "application/wasm",
                std::fs::read(wasm).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{manifest}");
        manifest
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn calc_job(tenant: &str, a: f64) -> Value {
    json!({
        "kind": "tool_call",
        "tenant_id": tenant,
        "payload": {"tool": "calculator", "args": {"op": "add", "a": a, "b": 1}},
    })
}

/// Asserts a problem document with `status` and `code`.
#[track_caller]
fn problem(answer: (StatusCode, Value), status: StatusCode, code: &str) -> Value {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn tools_register_show_export_call_and_remove() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    let manifest = server.register(guests::CALCULATOR).await;
    assert_eq!(manifest["name"], "calculator");

    let (status, tools) = server.get("/v1/tools").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tools[0]["name"], "calculator");

    let (_, shown) = server.get("/v1/tools/calculator").await;
    assert_eq!(shown["versions"], json!(["0.1.0"]));
    assert_eq!(shown["parameters"]["required"], json!(["op", "a", "b"]));
    let (_, openai) = server.get("/v1/tools/calculator?format=openai").await;
    assert_eq!(openai["type"], "function");
    assert_eq!(openai["function"]["name"], "calculator");
    let (_, mcp) = server.get("/v1/tools/calculator?format=mcp").await;
    assert_eq!(mcp["inputSchema"]["type"], "object");
    let (_, gemini) = server.get("/v1/tools/calculator?format=gemini").await;
    assert_eq!(gemini["parameters"], shown["parameters"]);
    problem(
        server.get("/v1/tools/calculator?format=yaml").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );

    let (status, job) = server
        .post(
            "/v1/tools/calculator/call",
            json!({"args": {"op": "mul", "a": 6, "b": 7}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], 42.0);
    assert_eq!(job["priority"], "realtime");

    let (status, job) = server
        .post(
            "/v1/tools/calculator/call",
            json!({"tenant_id": "acme", "args": {"op": "div", "a": 1, "b": 0}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["outcome"], "tool_error");
    assert_eq!(job["error"]["message"], "division by zero");

    let response = server.http.get(server.at("/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = response.text().await.unwrap();
    for line in [
        "work_engine_jobs{tenant=\"default\",priority=\"realtime\",status=\"succeeded\"} 1",
        "work_engine_jobs{tenant=\"acme\",priority=\"realtime\",status=\"failed\"} 1",
        "work_engine_attempts_total{outcome=\"ok\"} 1",
        "work_engine_attempts_total{outcome=\"tool_error\"} 1",
        "work_engine_run_seconds_count 2",
        "work_engine_wait_seconds_count{priority=\"realtime\"} 2",
        "work_engine_queue_depth{priority=\"batch\"} 0",
        // The two calls, and the `describe` run at registration.
        "work_engine_wasm_calls_total 3",
        "work_engine_wasm_peak_memory_bytes_bucket{le=\"+Inf\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("work_engine_wasm_fuel_consumed_total "),
        "{metrics}"
    );

    let body = problem(
        server
            .post(
                "/v1/tools/calculator/call",
                json!({"args": {"op": "pow", "a": 1}}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_args",
    );
    assert_eq!(body["violations"].as_array().unwrap().len(), 2, "{body}");

    let (status, removed) = server
        .http
        .delete(server.at("/v1/tools/calculator"))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let removed: Value = removed.json().await.unwrap();
    assert_eq!(removed[0]["version"], "0.1.0");
    problem(
        server.get("/v1/tools/calculator").await,
        StatusCode::NOT_FOUND,
        "unknown_tool",
    );
    problem(
        server
            .post("/v1/tools/calculator/call", json!({"args": {}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_tool",
    );
}

/// `serve --store memory` keeps its latest finished jobs, as many as
/// `--keep-finished` says; each store refuses the other's retention flag.
#[tokio::test]
async fn a_memory_server_keeps_its_latest_finished_jobs() {
    let data = TempDir::new().unwrap();
    let (code, _, err) = work_engine(data.path(), &["serve", "--keep-finished", "8"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--keep-finished is for --store memory"),
        "{err}"
    );
    let (code, _, err) = work_engine(
        data.path(),
        &["serve", "--store", "memory", "--keep-finished-days", "3"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--keep-finished-days is for --store sqlite"),
        "{err}"
    );

    let server = Served::start(data.path(), &["--store", "memory", "--keep-finished", "8"]);
    server.register(guests::CALCULATOR).await;
    let mut ids = Vec::new();
    for a in 0..40 {
        let (status, job) = server
            .post("/v1/jobs", calc_job("acme", f64::from(a)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let id = job["id"].as_str().unwrap().to_owned();
        let (_, done) = server
            .get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000"))
            .await;
        assert_eq!(done["status"], "succeeded", "{done}");
        ids.push(id);
    }
    let (_, newest) = server.get(&format!("/v1/jobs/{}", ids[39])).await;
    assert_eq!(newest["result"], 40.0);
    problem(
        server.get(&format!("/v1/jobs/{}", ids[0])).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, page) = server.get("/v1/jobs?tenant=acme&limit=100").await;
    let kept = page["jobs"].as_array().unwrap().len();
    assert!((8..=9).contains(&kept), "{kept} jobs kept");
}

#[tokio::test]
async fn uploads_refuse_what_is_not_a_tool() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &["--max-upload-bytes", "300000"]);
    problem(
        server
            .post_raw("/v1/tools", "application/wasm", "not wasm at all")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_component",
    );
    problem(
        server
            .post_raw("/v1/tools", "application/wasm", vec![0u8; 310_000])
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    problem(
        server
            .post_raw(
                "/v1/tools?allow_dir=",
                "application/wasm",
                std::fs::read(guests::CALCULATOR).unwrap(),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_grant",
    );
    // Multipart, as a browser form or `curl -F component=@tool.wasm` sends it.
    let form = reqwest::multipart::Form::new().part(
        "component",
        reqwest::multipart::Part::bytes(std::fs::read(guests::CALCULATOR).unwrap())
            .file_name("calculator.wasm"),
    );
    let response = server
        .http
        .post(server.at("/v1/tools"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Sends `request` on `stream` and reads one answer (its head and a
/// `Content-Length` body); `None` when the server closed the connection
/// instead.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return Some(head);
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A refused grant reads the upload before answering, so the connection
/// carries the client's next request (a client that had already sent it
/// lost it when the server closed instead); an answer that leaves a body
/// unread says the connection closes.
#[tokio::test]
async fn a_refused_grant_keeps_the_connection_open() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    let key = server.operator_key.clone().unwrap();
    let addr = server.url.trim_start_matches("http://").to_owned();
    let wasm = std::fs::read(guests::CALCULATOR).unwrap();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut upload = format!(
        "POST /v1/tools?allow_dir= HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/wasm\r\ncontent-length: {}\r\n\r\n",
        wasm.len()
    )
    .into_bytes();
    upload.extend_from_slice(&wasm);
    let refused = exchange(&mut stream, &upload).await.expect("an answer");
    assert!(refused.starts_with("http/1.1 422"), "{refused}");
    assert!(!refused.contains("connection: close"), "{refused}");
    let next = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let healthy = exchange(&mut stream, next.as_bytes())
        .await
        .expect("the connection still open");
    assert!(healthy.starts_with("http/1.1 200"), "{healthy}");
    // Any answer that leaves a body unread says it closes the connection,
    // whichever route gave it: here, no route at all.
    let stray = format!(
        "POST /v1/nowhere HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
    );
    let closed = exchange(&mut stream, stray.as_bytes())
        .await
        .expect("an answer");
    assert!(closed.starts_with("http/1.1 404"), "{closed}");
    assert!(closed.contains("connection: close"), "{closed}");
}

/// A payload comes back as it was sent, after a restart too: its key
/// order, and a number past what a float holds to its last digit.
#[tokio::test]
async fn a_payload_is_kept_as_the_text_it_came_in() {
    let data = TempDir::new().unwrap();
    let mut server = Served::start(data.path(), &[]);
    server.register(guests::CALCULATOR).await;
    let payload =
        r#"{"tool": "calculator", "args": {"op": "add", "b": 1, "a": 12345678901234567890123}}"#;
    let body = format!(r#"{{"kind": "tool_call", "tenant_id": "acme", "payload": {payload}}}"#);
    let (status, created) = server.post_raw("/v1/jobs", "application/json", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, done) = server
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000"))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], 12345678901234567890124.0);

    let read = |server: &Served| {
        let request = server.http.get(server.at(&format!("/v1/jobs/{id}")));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let kept = format!(r#""payload":{payload}"#);
    let text = read(&server).await;
    assert!(text.contains(&kept), "{text}");
    server.kill();
    let server = Served::start(data.path(), &[]);
    let text = read(&server).await;
    assert!(text.contains(&kept), "after a restart: {text}");
}

#[tokio::test]
async fn jobs_submit_read_list_wait_cancel_and_batches() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    server.register(guests::CALCULATOR).await;

    let mut job = calc_job("acme", 1.0);
    job["external_id"] = json!("order-1");
    job["namespace"] = json!("shop");
    let response = server
        .http
        .post(server.at("/v1/jobs"))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));

    let (status, done) = server
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], 2.0);
    let (_, read) = server.get(&location).await;
    assert_eq!(read, done);
    let (_, found) = server
        .get("/v1/jobs/by-external-id/order-1?tenant=acme")
        .await;
    assert_eq!(found["id"], id.as_str());
    problem(
        server
            .get("/v1/jobs/by-external-id/order-1?tenant=other")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Idempotency: the same key gives back the first job, with 200.
    let mut keyed = calc_job("acme", 5.0);
    keyed["constraints"] = json!({"idempotency_key": "k1"});
    let (first_status, first) = server.post("/v1/jobs", keyed.clone()).await;
    let (again_status, again) = server.post("/v1/jobs", keyed).await;
    assert_eq!(first_status, StatusCode::CREATED);
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(first["id"], again["id"]);

    // A batch, all or none.
    let (status, batch) = server
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [calc_job("acme", 10.0), calc_job("acme", 11.0)]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    for job in batch["jobs"].as_array().unwrap() {
        server
            .get(&format!(
                "/v1/jobs/{}/wait?timeout_ms=10000",
                job["id"].as_str().unwrap()
            ))
            .await;
    }
    let (status, summary) = server
        .get(&format!("/v1/batches/{batch_id}?tenant=acme"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["total"], 2);
    assert_eq!(summary["jobs"]["succeeded"], 2, "{summary}");
    let bad = problem(
        server
            .post(
                "/v1/jobs/batch",
                json!({"jobs": [calc_job("acme", 1.0), {"kind": "tool_call", "tenant_id": "acme",
                    "payload": {"tool": "calculator", "args": {"op": "add"}}}]}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_args",
    );
    assert_eq!(bad["index"], 1);

    // Cancel a job that waits for its start time.
    let mut later = calc_job("acme", 3.0);
    later["constraints"] = json!({"not_before": "2099-01-01T00:00:00Z"});
    let (_, later) = server.post("/v1/jobs", later).await;
    let later_id = later["id"].as_str().unwrap();
    let (status, canceled) = server
        .post(&format!("/v1/jobs/{later_id}/cancel"), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(canceled["status"], "canceled");

    // Listing: filters and pages.
    let (_, page) = server.get("/v1/jobs?tenant=acme&namespace=shop").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let (_, page) = server.get("/v1/jobs?tenant=acme&status=canceled").await;
    assert_eq!(page["jobs"][0]["id"], later_id);
    let (_, first_page) = server.get("/v1/jobs?tenant=acme&limit=2").await;
    assert_eq!(first_page["jobs"].as_array().unwrap().len(), 2);
    let cursor = first_page["next_cursor"].as_str().unwrap();
    let (_, second_page) = server
        .get(&format!("/v1/jobs?tenant=acme&limit=2&cursor={cursor}"))
        .await;
    assert_ne!(second_page["jobs"][0]["id"], first_page["jobs"][0]["id"]);
    problem(
        server.get("/v1/jobs?tenant=acme&cursor=nonsense").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );

    let (status, stats) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["jobs"]["succeeded"].as_u64().unwrap() >= 4, "{stats}");
}

#[tokio::test]
async fn dead_letters_list_and_retry() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    server.register(guests::CALCULATOR).await;
    let (_, job) = server
        .post(
            "/v1/jobs",
            json!({"kind": "tool_call", "tenant_id": "acme",
                   "payload": {"tool": "calculator", "args": {"op": "div", "a": 1, "b": 0}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, failed) = server
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000"))
        .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["dead_letter"], true);
    let (_, page) = server.get("/v1/dead-letters?tenant=acme").await;
    assert_eq!(page["jobs"][0]["id"], id.as_str());
    let (status, revived) = server
        .post(&format!("/v1/dead-letters/{id}/retry"), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK, "{revived}");
    assert_eq!(revived["dead_letter"], false);
    let (_, again) = server
        .get(&format!("/v1/jobs/{id}/wait?timeout_ms=10000"))
        .await;
    assert_eq!(again["status"], "failed");
    let (_, fine) = server
        .post(
            "/v1/tools/calculator/call",
            json!({"args": {"op": "add", "a": 1, "b": 1}}),
        )
        .await;
    problem(
        server
            .post(
                &format!("/v1/dead-letters/{}/retry", fine["id"].as_str().unwrap()),
                json!(null),
            )
            .await,
        StatusCode::CONFLICT,
        "not_dead_lettered",
    );
}

#[tokio::test]
async fn events_stream_progress_and_partials_in_order_then_the_end() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    server.register(guests::CHATTY).await;
    server.register(guests::MISBEHAVE).await;
    // The chatty job waits for the one slot of its concurrency group,
    // which a sleeping job holds until the stream is open.
    let mut blocker = sleeper(1, 60_000);
    blocker["constraints"]["concurrency_group"] = json!("hold");
    let (_, blocker) = server.post("/v1/jobs", blocker).await;
    let blocker = blocker["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &blocker, "running").await;
    let (_, job) = server
        .post(
            "/v1/jobs",
            json!({"kind": "tool_call", "tenant_id": "acme",
                   "payload": {"tool": "chatty", "args": {"steps": 3}},
                   "constraints": {"concurrency_group": "hold"}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let release = format!("/v1/jobs/{blocker}/cancel");
    let names = read_events(&server, &id, Some(&release)).await;
    let progress: Vec<&str> = names
        .iter()
        .filter(|(name, _)| name == "job.progress")
        .map(|(_, data)| data["update"]["type"].as_str().unwrap())
        .collect();
    let order: Vec<&str> = names.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(order.first(), Some(&"job.state"), "{order:?}");
    assert_eq!(names[0].1["status"], "queued", "{order:?}");
    assert_eq!(order.last(), Some(&"job.completed"), "{order:?}");
    assert!(order.contains(&"job.started"), "{order:?}");
    let partials: Vec<&Value> = names
        .iter()
        .filter(|(_, data)| data["update"]["type"] == "partial")
        .map(|(_, data)| &data["update"]["value"]["step"])
        .collect();
    assert_eq!(partials, [&json!(1), &json!(2), &json!(3)], "{order:?}");
    assert_eq!(
        progress.iter().filter(|kind| **kind == "progress").count(),
        3,
        "{order:?}"
    );

    // Late: the job has ended; the stream is its state, and ends.
    let late = read_events(&server, &id, None).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1["status"], "succeeded");
}

/// Every event of the stream, until the server ends it. Once the first
/// event has arrived (the stream is open), posts to `then` if given.
async fn read_events(server: &Served, id: &str, then: Option<&str>) -> Vec<(String, Value)> {
    let mut response = server
        .http
        .get(server.at(&format!("/v1/jobs/{id}/events")))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    let mut then = then;
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if text.contains("\n\n")
            && let Some(path) = then.take()
        {
            let (status, body) = server.post(path, json!(null)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(value).unwrap());
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_the_server_stays_healthy() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &["--max-body-bytes", "65536"]);
    server.register(guests::CALCULATOR).await;
    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/v1/jobs",
            json,
            b"{\"kind\": \"tool_".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/jobs",
            json,
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/jobs",
            json,
            b"{\"kind\": 7, \"tenant_id\": \"a\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/jobs",
            json,
            b"{\"kind\": \"sim\", \"tenant_id\": \"a\", \"colour\": 1}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/jobs",
            json,
            b"{\"kind\": \"sim\", \"tenant_id\": \"a\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
        ),
        (
            "/v1/jobs",
            json,
            b"{\"kind\": \"sim\", \"tenant_id\": \"a\\u0007\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
        (
            "/v1/jobs",
            json,
            [
                b"{\"kind\": \"sim\", \"tenant_id\": \"a\", \"metadata\": ".as_slice(),
                &[b'['; 10_000],
                &[b']'; 10_000],
                b"}",
            ]
            .concat(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/jobs",
            json,
            vec![b' '; 100_000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "/v1/jobs",
            json,
            b"{\"kind\": \"sim\", \"tenant_id\": \"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/jobs",
            "text/plain",
            b"{}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/v1/jobs/batch",
            json,
            b"{\"jobs\": []}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
        (
            "/v1/jobs/batch",
            json,
            b"[1, 2]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/tools/calculator/call",
            json,
            b"{\"args\": {\"op\": \"add\", \"a\": 1, \"b\": \"2\"}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_args",
        ),
        (
            "/v1/tools/nope/call",
            json,
            b"{\"args\": {}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_tool",
        ),
        (
            "/v1/tools/calculator/call",
            json,
            b"{\"args\": {}, \"resources\": {\"cpu\": -1}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let answer = server.post_raw(path, content_type, body).await;
        assert_eq!(answer.0, status, "{path}: {}", answer.1);
        assert_eq!(answer.1["code"], code, "{path}: {}", answer.1);
    }
    let gets = [
        (
            "/v1/jobs/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/v1/jobs/01a20000-0000-7000-8000-000000000000",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/jobs?tenant=a&limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/jobs?tenant=a&limit=abc",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/jobs?tenant=a&status=sleeping",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/jobs?tenant=a&colour=red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/batches/01a20000-0000-7000-8000-000000000000?tenant=a",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/v1/nothing-here", StatusCode::NOT_FOUND, "unknown_route"),
        ("/v1/tools/nope", StatusCode::NOT_FOUND, "unknown_tool"),
    ];
    for (path, status, code) in gets {
        problem(server.get(path).await, status, code);
    }
    let response = server.http.put(server.at("/v1/jobs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let (status, job) = server
        .post(
            "/v1/tools/calculator/call",
            json!({"args": {"op": "add", "a": 1, "b": 1}}),
        )
        .await;
    assert_eq!((status, &job["result"]), (StatusCode::OK, &json!(2.0)));
}

fn sleeper(max_attempts: u32, timeout_ms: u64) -> Value {
    json!({
        "kind": "tool_call",
        "tenant_id": "slow",
        "payload": {"tool": "misbehave", "args": {"mode": "sleep"}},
        "resources": {"timeout_ms": timeout_ms},
        "constraints": {"retry_policy": {"max_attempts": max_attempts, "base_delay_ms": 10,
                                         "retry_on": ["timeout"]}},
    })
}

async fn wait_for_status(server: &Served, id: &str, status: &str) {
    for _ in 0..500 {
        let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
        if job["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never became {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_job_survives_a_kill_and_ends_exactly_once() {
    let data = TempDir::new().unwrap();
    let mut server = Served::start(data.path(), &["--cpu", "4"]);
    server.register(guests::CALCULATOR).await;
    server.register(guests::MISBEHAVE).await;

    // Two attempts running when the server dies: one may try again, one
    // has no attempt left.
    let (_, again) = server.post("/v1/jobs", sleeper(2, 600_000)).await;
    let (_, last) = server.post("/v1/jobs", sleeper(1, 600_000)).await;
    let (again, last) = (
        again["id"].as_str().unwrap().to_owned(),
        last["id"].as_str().unwrap().to_owned(),
    );
    wait_for_status(&server, &again, "running").await;
    wait_for_status(&server, &last, "running").await;

    // Load from 8 clients; half the jobs wait a moment before they may
    // start, so some are queued when the kill comes. Every third request
    // is a synchronous call: one answered must be durable too.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (http, url, stop) = (server.http.clone(), server.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let a = f64::from(client * 100_000 + n);
                if n % 3 == 0 {
                    let call = json!({"tenant_id": "load", "args": {"op": "add", "a": a, "b": 1}});
                    let Ok(response) = http
                        .post(format!("{url}/v1/tools/calculator/call"))
                        .json(&call)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    if response.status() == StatusCode::OK
                        && let Ok(job) = response.json::<Value>().await
                    {
                        assert_eq!(job["result"], json!(a + 1.0), "{job}");
                        accepted.push((job["id"].as_str().unwrap().to_owned(), a));
                    }
                    continue;
                }
                let mut job = calc_job("load", a);
                if n % 2 == 0 {
                    job["constraints"] = json!({
                        "not_before": chrono::Utc::now() + chrono::Duration::milliseconds(500)
                    });
                }
                let Ok(response) = http.post(format!("{url}/v1/jobs")).json(&job).send().await
                else {
                    continue;
                };
                if response.status() == StatusCode::CREATED {
                    let job: Value = response.json().await.unwrap();
                    accepted.push((job["id"].as_str().unwrap().to_owned(), a));
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // What had ended before the kill must not change after it.
    let (_, ended) = server
        .get("/v1/jobs?tenant=load&status=succeeded&limit=1000")
        .await;
    let ended: Vec<Value> = ended["jobs"].as_array().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await.unwrap());
    }
    assert!(accepted.len() > 50, "only {} jobs accepted", accepted.len());
    assert!(!ended.is_empty());

    let server = Served::start(data.path(), &["--cpu", "4"]);
    for (id, a) in &accepted {
        let (status, job) = server
            .get(&format!("/v1/jobs/{id}/wait?timeout_ms=30000"))
            .await;
        assert_eq!(status, StatusCode::OK, "accepted job {id} was lost: {job}");
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"], json!(a + 1.0), "{job}");
        assert_eq!(job["attempt"], job["lease_epoch"], "{job}");
    }
    for before in &ended {
        let (_, after) = server
            .get(&format!("/v1/jobs/{}", before["id"].as_str().unwrap()))
            .await;
        assert_eq!(&after, before, "a finished job changed after the restart");
    }
    let mut listed = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = server
            .get(&format!("/v1/jobs?tenant=load&limit=1000{cursor}"))
            .await;
        for job in page["jobs"].as_array().unwrap() {
            assert!(listed.insert(job["id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    for (id, _) in &accepted {
        assert!(listed.contains(id));
    }

    // The lost attempt counts: the one running now is the second.
    wait_for_status(&server, &again, "running").await;
    let (_, running) = server.get(&format!("/v1/jobs/{again}")).await;
    assert_eq!(running["attempt"], 2, "{running}");
    server
        .post(&format!("/v1/jobs/{again}/cancel"), json!(null))
        .await;
    let (_, canceled) = server
        .get(&format!("/v1/jobs/{again}/wait?timeout_ms=20000"))
        .await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    let (_, last) = server.get(&format!("/v1/jobs/{last}")).await;
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["outcome"], "backend_error", "{last}");
    assert_eq!(last["dead_letter"], true, "{last}");
    assert_eq!(last["attempt"], 1, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_work_and_lets_running_jobs_finish() {
    let data = TempDir::new().unwrap();
    let mut server = Served::start(data.path(), &["--shutdown-grace-ms", "10000"]);
    server.register(guests::MISBEHAVE).await;
    let (_, job) = server.post("/v1/jobs", sleeper(1, 3_000)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_status(&server, &id, "running").await;

    // An event stream that would never end on its own must not keep the
    // server up.
    let mut later = sleeper(1, 1_500);
    later["constraints"]["not_before"] = json!("2099-01-01T00:00:00Z");
    let (_, later) = server.post("/v1/jobs", later).await;
    let watching = server
        .http
        .get(server.at(&format!(
            "/v1/jobs/{}/events",
            later["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(watching.status(), StatusCode::OK);

    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..250 {
        if server.get("/healthz").await.0 == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    problem(
        server.post("/v1/jobs", calc_job("late", 1.0)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    );
    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "shutting_down");
    let mut exit = None;
    for _ in 0..400 {
        exit = server.child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("the server did not stop within 20 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");

    // The running job ended before the server stopped; nothing else was
    // accepted.
    let server = Served::start(data.path(), &[]);
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "timeout", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    let (_, late) = server.get("/v1/jobs?tenant=late").await;
    assert_eq!(late["jobs"], json!([]));
    drop(watching);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_to_a_server() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    let (code, out, err) = server.cli(&["register", guests::CALCULATOR]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("registered calculator@0.1.0"), "{out}");
    let (_, out, _) = server.cli(&["tools"]);
    assert!(out.starts_with("calculator@0.1.0"), "{out}");
    let (_, out, _) = server.cli(&["tools", "show", "calculator"]);
    assert!(out.contains("parameters:"), "{out}");

    let (code, out, _) = server.cli(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "mul", "a": 6, "b": 7}"#,
    ]);
    assert_eq!((code, out.trim()), (0, "42.0"));
    let (code, _, err) = server.cli(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "div", "a": 1, "b": 0}"#,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("division by zero"), "{err}");
    let (code, _, err) = server.cli(&["call", "calculator", "--args", r#"{"op": "add"}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_args"), "{err}");

    let (code, out, err) = server.cli(&[
        "submit",
        "--tool",
        "calculator",
        "--args",
        r#"{"op": "add", "a": 1, "b": 2}"#,
        "--tenant",
        "acme",
        "--wait",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["result"], 3.0);
    let id = job["id"].as_str().unwrap();
    let (_, out, _) = server.cli(&["jobs", "get", id]);
    assert!(
        out.contains("succeeded") && out.contains("result 3.0"),
        "{out}"
    );
    let (_, out, _) = server.cli(&["jobs", "list", "--tenant", "acme"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, _, _) = server.cli(&["jobs", "wait", id]);
    assert_eq!(code, 0);

    let (_, out, _) = server.cli(&[
        "submit",
        "--tool",
        "calculator",
        "--args",
        r#"{"op": "div", "a": 1, "b": 0}"#,
        "--json",
    ]);
    let failed: Value = serde_json::from_str(&out).unwrap();
    let failed = failed["id"].as_str().unwrap();
    let (code, _, _) = server.cli(&["jobs", "wait", failed]);
    assert_eq!(code, 1, "a failed job exits non-zero");
    let (_, out, _) = server.cli(&["dlq", "list"]);
    assert!(out.starts_with(failed), "{out}");
    let (code, out, err) = server.cli(&["dlq", "retry", failed]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queued") || out.contains("running") || out.contains("failed"),
        "{out}"
    );

    let (_, out, _) = server.cli(&[
        "submit",
        "--tool",
        "calculator",
        "--args",
        r#"{"op": "add", "a": 1, "b": 2}"#,
        "--tenant",
        "acme",
    ]);
    assert!(out.contains("tenant acme"), "{out}");
    let (code, out, _) = server.cli(&["stats"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("jobs:"), "{out}");

    // Without a server, reads come from the data directory's store.
    let output = Command::new(env!("CARGO_BIN_EXE_work-engine"))
        .args(["jobs", "list", "--tenant", "acme", "--json"])
        .env("WORK_ENGINE_DATA_DIR", data.path())
        .env_remove("WORK_ENGINE_URL")
        .output()
        .unwrap();
    let page: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    let output = Command::new(env!("CARGO_BIN_EXE_work-engine"))
        .args(["stats"])
        .env("WORK_ENGINE_DATA_DIR", data.path())
        .env_remove("WORK_ENGINE_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--server"));
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_server_answers() {
    let data = TempDir::new().unwrap();
    let server = Served::start(data.path(), &[]);
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // Every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let name = reference.split('"').next().unwrap();
        let name = name.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }

    let mut documented = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            assert!(operation["responses"].is_object(), "{method} {path}");
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let expected = [
        "DELETE /v1/keys/{id}",
        "DELETE /v1/tools/{name}",
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/audit",
        "GET /v1/batches/{id}",
        "GET /v1/dead-letters",
        "GET /v1/jobs",
        "GET /v1/jobs/by-external-id/{external_id}",
        "GET /v1/jobs/{id}",
        "GET /v1/jobs/{id}/audit",
        "GET /v1/jobs/{id}/events",
        "GET /v1/jobs/{id}/wait",
        "GET /v1/keys",
        "GET /v1/stats",
        "GET /v1/tenants/{tenant}/quota",
        "GET /v1/tools",
        "GET /v1/tools/{name}",
        "POST /v1/dead-letters/{id}/retry",
        "POST /v1/jobs",
        "POST /v1/jobs/batch",
        "POST /v1/jobs/{id}/cancel",
        "POST /v1/keys",
        "POST /v1/tools",
        "POST /v1/tools/{name}/call",
        "PUT /v1/tenants/{tenant}/quota",
    ];
    assert_eq!(documented, expected);

    // Each documented route is one the server routes: whatever it makes
    // of this request, it is not "no such route" nor "wrong method".
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "01a20000-0000-7000-8000-000000000000")
            .replace("{name}", "calculator")
            .replace("{tenant}", "t")
            .replace("{external_id}", "x");
        let url = server.at(&format!("{path}?tenant=t&timeout_ms=1"));
        let request = match method {
            "GET" => server.http.get(url),
            "POST" => server.http.post(url).json(&json!({})),
            "DELETE" => server.http.delete(url),
            "PUT" => server.http.put(url).json(&json!({})),
            other => panic!("{other}"),
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{route}: {body}");
        assert!(!body.contains("unknown_route"), "{route}: {body}");
    }
}

#[tokio::test]
async fn settings_come_from_flags_then_environment_then_the_config_file() {
    let data = TempDir::new().unwrap();
    let config = data.path().join("serve.toml");
    std::fs::write(
        &config,
        "addr = \"127.0.0.1:0\"\ncpu = 3\nmemory_mb = 3000\ngpus = [\"A100:0\", \"A100:1\"]\nstore = \"memory\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let capacity = |server: &Served| {
        let server_url = server.url.clone();
        let http = server.http.clone();
        async move {
            let stats: Value = http
                .get(format!("{server_url}/v1/stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let resources = &stats["resources"];
            (
                resources["cpu_capacity"].as_f64().unwrap(),
                resources["memory_mb_capacity"].as_u64().unwrap(),
                resources["gpus_capacity"]["A100"].as_u64().unwrap_or(0),
            )
        }
    };

    let from_file = Served::start_with(data.path(), &["--config", config], &[]);
    assert_eq!(capacity(&from_file).await, (3.0, 3000, 2));
    drop(from_file);

    let env_over_file = Served::start_with(
        data.path(),
        &["--config", config],
        &[("WORK_ENGINE_CPU", "5"), ("WORK_ENGINE_GPUS", "A100:7")],
    );
    assert_eq!(capacity(&env_over_file).await, (5.0, 3000, 1));
    drop(env_over_file);

    let flag_over_env = Served::start_with(
        data.path(),
        &["--config", config, "--cpu", "7"],
        &[
            ("WORK_ENGINE_CPU", "5"),
            ("WORK_ENGINE_CONFIG", "/nonexistent"),
        ],
    );
    assert_eq!(capacity(&flag_over_env).await, (7.0, 3000, 2));
    drop(flag_over_env);

    // A bad file is a clear error at start.
    std::fs::write(data.path().join("bad.toml"), "cpu = \"many\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_work-engine"))
        .args(["serve", "--config"])
        .arg(data.path().join("bad.toml"))
        .env("WORK_ENGINE_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid config file"), "{stderr}");
}
