//! API keys, tenants and roles through `work-engine serve`: nobody sees or
//! touches what is not theirs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use work_test_artifacts as guests;

use crate::http::{Served, answer, client_with, create_key, work_engine};

/// Sends `request` and reads its answer.
async fn ask(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    answer(request.send().await.unwrap()).await
}

/// What a route needs of a key, as the server's docs promise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Submit,
    Admin,
    Operator,
}

/// Every route but the open two, with what it needs. A route the OpenAPI
/// document lists and this table does not fails the matrix test.
fn needs() -> BTreeMap<&'static str, Need> {
    use Need::{Admin, Operator, Submit};
    BTreeMap::from([
        ("DELETE /v1/keys/{id}", Admin),
        ("DELETE /v1/tools/{name}", Admin),
        ("GET /metrics", Operator),
        ("GET /v1/audit", Admin),
        ("GET /v1/batches/{id}", Submit),
        ("GET /v1/dead-letters", Submit),
        ("GET /v1/jobs", Submit),
        ("GET /v1/jobs/by-external-id/{external_id}", Submit),
        ("GET /v1/jobs/{id}", Submit),
        ("GET /v1/jobs/{id}/audit", Submit),
        ("GET /v1/jobs/{id}/events", Submit),
        ("GET /v1/jobs/{id}/wait", Submit),
        ("GET /v1/keys", Admin),
        ("GET /v1/stats", Operator),
        ("GET /v1/tenants/{tenant}/quota", Admin),
        ("GET /v1/tools", Submit),
        ("GET /v1/tools/{name}", Submit),
        ("POST /v1/dead-letters/{id}/retry", Submit),
        ("POST /v1/jobs", Submit),
        ("POST /v1/jobs/batch", Submit),
        ("POST /v1/jobs/{id}/cancel", Submit),
        ("POST /v1/keys", Admin),
        ("POST /v1/tools", Admin),
        ("POST /v1/tools/{name}/call", Submit),
        ("PUT /v1/tenants/{tenant}/quota", Admin),
    ])
}

const OPEN: [&str; 2] = ["GET /healthz", "GET /openapi.json"];

fn key(data: &Path, args: &[&str]) -> String {
    create_key(data, args)["key"].as_str().unwrap().to_owned()
}

/// Tenant A's things, for others to try to reach.
struct TenantA {
    job: String,
    batch: String,
    external_id: &'static str,
    key_id: String,
    tool_component: String,
}

impl TenantA {
    /// The id a route's `{id}` names: A's batch, key or job.
    fn id_for(&self, route: &str) -> &str {
        if route.contains("/v1/batches/") {
            &self.batch
        } else if route.contains("/v1/keys/") {
            &self.key_id
        } else {
            &self.job
        }
    }
}

/// A request for `route` with `id` and `name` in its path, every query
/// parameter it documents that names A (`tenant`), and a body naming A,
/// sent with `key`.
async fn send(
    served: &Served,
    route: &str,
    query: &[String],
    (id, name): (&str, &str),
    key: Option<&str>,
) -> (StatusCode, String) {
    let (method, path) = route.split_once(' ').unwrap();
    let path = path
        .replace("{id}", id)
        .replace("{name}", name)
        .replace("{tenant}", "tenant-a")
        .replace("{external_id}", "a-secret-order");
    let mut pairs = Vec::new();
    if query.iter().any(|q| q == "tenant") {
        pairs.push("tenant=tenant-a");
    }
    if query.iter().any(|q| q == "timeout_ms") {
        pairs.push("timeout_ms=1");
    }
    let url = served.at(&format!("{path}?{}", pairs.join("&")));
    let http = client_with(key);
    let job_body = json!({
        "kind": "tool_call", "tenant_id": "tenant-a",
        "payload": {"tool": "calculator", "args": {"op": "add", "a": 1, "b": 1}},
    });
    let request = match (method, path.as_str()) {
        ("GET", _) => http.get(url),
        ("DELETE", _) => http.delete(url),
        ("PUT", _) => http.put(url).json(&json!({"quota": {"max_queued": 1}})),
        ("POST", "/v1/jobs") => http.post(url).json(&job_body),
        ("POST", "/v1/jobs/batch") => http.post(url).json(&json!({"jobs": [job_body]})),
        ("POST", "/v1/keys") => http
            .post(url)
            .json(&json!({"tenant": "tenant-a", "role": "admin"})),
        ("POST", "/v1/tools") => http
            .post(url)
            .header("content-type", "application/wasm")
            .body(std::fs::read(guests::TEXT_STATS).unwrap()),
        ("POST", path) if path.ends_with("/call") => http.post(url).json(&json!({
            "tenant_id": "tenant-a", "args": {"op": "add", "a": 1, "b": 1},
        })),
        ("POST", _) => http.post(url).json(&json!({})),
        other => panic!("{other:?}"),
    };
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    // An event stream is refused before it starts, or cut here.
    let body = tokio::time::timeout(Duration::from_millis(500), response.text())
        .await
        .map(Result::unwrap_or_default)
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_whoever_may_not_use_it_and_reveals_nothing() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);

    // Tenant A: its own tool, a job, a batch, a key.
    let admin_a = key(data.path(), &["--tenant", "tenant-a", "--role", "admin"]);
    let a_http = client_with(Some(&admin_a));
    let (status, tool) = ask(a_http
        .post(served.at("/v1/tools"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(guests::CALCULATOR).unwrap()))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{tool}");
    assert_eq!(tool["tenant"], "tenant-a", "{tool}");
    let (status, job) = ask(a_http.post(served.at("/v1/jobs")).json(&json!({
        "kind": "tool_call", "external_id": "a-secret-order",
        "payload": {"tool": "calculator", "args": {"op": "add", "a": 1, "b": 1}},
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["tenant_id"], "tenant-a", "the key's tenant");
    let (status, batch) = ask(a_http
        .post(served.at("/v1/jobs/batch"))
        .json(&json!({"jobs": [{"kind": "tool_call",
                "payload": {"tool": "calculator", "args": {"op": "add", "a": 2, "b": 2}}}]})))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{batch}");
    let a = TenantA {
        job: job["id"].as_str().unwrap().to_owned(),
        batch: batch["id"].as_str().unwrap().to_owned(),
        external_id: "a-secret-order",
        key_id: create_key(data.path(), &["--tenant", "tenant-a"])["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        tool_component: tool["component"].as_str().unwrap().to_owned(),
    };

    let revoked = key(data.path(), &["--tenant", "tenant-a", "--role", "admin"]);
    let revoked_id = &revoked["wk_live_".len()..][..16];
    work_engine(data.path(), &["keys", "revoke", revoked_id], &[]);
    let expired = key(
        data.path(),
        &[
            "--tenant",
            "tenant-a",
            "--role",
            "admin",
            "--expires-in",
            "1s",
        ],
    );
    let other_admin = key(data.path(), &["--tenant", "tenant-b", "--role", "admin"]);
    let roles = [
        (
            Need::Submit,
            key(data.path(), &["--tenant", "tenant-a", "--role", "worker"]),
        ),
        (
            Need::Admin,
            key(
                data.path(),
                &["--tenant", "tenant-a", "--role", "submitter"],
            ),
        ),
        (Need::Operator, admin_a.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The routes, and their query parameters, from the server's own
    // document.
    let (_, doc) = served.get("/openapi.json").await;
    let mut routes = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let query: Vec<String> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            routes.push((format!("{} {path}", method.to_uppercase()), query));
        }
    }
    let needs = needs();
    let unknown = "01a20000-0000-7000-8000-00000000dead";
    let unknown_name = "no-such-tool";
    for (route, query) in &routes {
        let ids = (a.id_for(route), "calculator");
        if OPEN.contains(&route.as_str()) {
            let (status, body) = send(&served, route, query, ids, None).await;
            assert_eq!(status, StatusCode::OK, "{route} is open: {body}");
            continue;
        }
        let need = *needs
            .get(route.as_str())
            .unwrap_or_else(|| panic!("{route} is not in the test's table of routes"));

        for (caller, key, code) in [
            ("no key", None, "missing_key"),
            (
                "a malformed key",
                Some("wk_live_not-a-key"),
                "malformed_key",
            ),
            ("a revoked key", Some(revoked.as_str()), "revoked_key"),
            ("an expired key", Some(expired.as_str()), "expired_key"),
        ] {
            let (status, body) = send(&served, route, query, ids, key).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{route} with {caller}: {body}"
            );
            assert!(body.contains(code), "{route} with {caller}: {body}");
        }

        for (too_small, key) in &roles {
            if *too_small <= need {
                let (status, body) = send(&served, route, query, ids, Some(key)).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{route} needs {need:?}: {body}"
                );
                assert!(body.contains("\"forbidden\""), "{route}: {body}");
            }
        }

        // Another tenant's admin: A's things answer as missing ones do.
        let (status, body) = send(&served, route, query, ids, Some(&other_admin)).await;
        assert!(!status.is_server_error(), "{route}: {status} {body}");
        if need == Need::Operator {
            assert_eq!(status, StatusCode::FORBIDDEN, "{route}: {body}");
        }
        let seen = body.replace(ids.0, unknown).replace(ids.1, unknown_name);
        if route.contains("{id}") || route.contains("{name}") || route.contains("{external_id}") {
            let (missing_status, missing) = send(
                &served,
                route,
                query,
                (unknown, unknown_name),
                Some(&other_admin),
            )
            .await;
            assert_eq!(status, missing_status, "{route}: {body} vs {missing}");
            assert_eq!(seen, missing, "{route}: A's thing answers as a missing one");
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
                "{route}: {status} {body}"
            );
        }
        for secret in [
            "tenant-a",
            a.job.as_str(),
            a.batch.as_str(),
            a.external_id,
            a.key_id.as_str(),
            a.tool_component.as_str(),
        ] {
            assert!(!seen.contains(secret), "{route} reveals {secret}: {body}");
        }
    }

    // A itself still sees all of it, and B none of it in its own lists.
    let (status, job) = ask(a_http.get(served.at(&format!("/v1/jobs/{}", a.job)))).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let b_http = client_with(Some(&other_admin));
    for path in [
        "/v1/jobs",
        "/v1/tools",
        "/v1/keys",
        "/v1/audit",
        "/v1/dead-letters",
    ] {
        let response = b_http.get(served.at(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("tenant-a"), "{path}: {body}");
        assert!(!body.contains(&a.job), "{path}: {body}");
    }
}

#[tokio::test]
async fn the_key_table_holds_no_secret() {
    let data = TempDir::new().unwrap();
    let keys: Vec<String> = (0..3)
        .map(|i| key(data.path(), &["--tenant", &format!("t{i}")]))
        .collect();
    let db = rusqlite::Connection::open(data.path().join("auth.db")).unwrap();
    let mut statement = db.prepare("SELECT * FROM keys").unwrap();
    let columns = statement.column_count();
    let mut rows = statement.query([]).unwrap();
    let mut stored = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        for column in 0..columns {
            let value: rusqlite::types::Value = row.get(column).unwrap();
            stored.push(match value {
                rusqlite::types::Value::Text(text) => text.into_bytes(),
                rusqlite::types::Value::Blob(bytes) => bytes,
                other => format!("{other:?}").into_bytes(),
            });
        }
    }
    assert_eq!(stored.len(), 3 * columns);
    let file = std::fs::read(data.path().join("auth.db")).unwrap();
    for key in &keys {
        let secret = key.rsplit('_').next().unwrap();
        assert_eq!(secret.len(), 64);
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        for value in &stored {
            let haystack = String::from_utf8_lossy(value);
            assert!(
                !haystack.contains(&secret[..16]),
                "a stored value holds the secret"
            );
            assert!(
                !value.windows(16).any(|w| w == &bytes[..16]),
                "raw secret stored"
            );
        }
        assert!(!file.windows(16).any(|w| w == &secret.as_bytes()[..16]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_immediate_under_concurrent_use() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    let created = create_key(data.path(), &["--tenant", "busy"]);
    let busy = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();

    let revoked_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let mut users = Vec::new();
    for _ in 0..6 {
        let (http, url, revoked_at) = (
            client_with(Some(&busy)),
            served.at("/v1/jobs"),
            revoked_at.clone(),
        );
        users.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let started = Instant::now();
                let status = http.get(&url).send().await.unwrap().status();
                seen.push((started, status));
                let done = *revoked_at.lock().unwrap();
                if done.is_some_and(|at| started > at + Duration::from_millis(200)) {
                    return seen;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, revoked) = ask(served.http.delete(served.at(&format!("/v1/keys/{id}")))).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let at = Instant::now();
    *revoked_at.lock().unwrap() = Some(at);

    let (mut before, mut after) = (0, 0);
    for user in users {
        for (started, status) in user.await.unwrap() {
            if started > at {
                after += 1;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "a request after revocation"
                );
            } else if status == StatusCode::OK {
                before += 1;
            }
        }
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Revoked by another process, on the data directory: refused within
    // the store's CHANGES_SEEN_WITHIN (0.1 s).
    let other = create_key(data.path(), &["--tenant", "busy"]);
    let http = client_with(Some(other["key"].as_str().unwrap()));
    let (status, _) = ask(http.get(served.at("/v1/jobs"))).await;
    assert_eq!(status, StatusCode::OK);
    let (code, _, err) = work_engine(
        data.path(),
        &["keys", "revoke", other["id"].as_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(work_engine::auth::CHANGES_SEEN_WITHIN + Duration::from_millis(50)).await;
    let (status, _) = ask(http.get(served.at("/v1/jobs"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn submit_status(http: &reqwest::Client, served: &Served) -> (StatusCode, Option<u64>) {
    let response = http
        .post(served.at("/v1/jobs"))
        .json(&json!({"kind": "tool_call",
            "payload": {"tool": "calculator", "args": {"op": "add", "a": 1, "b": 1}}}))
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    (response.status(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_key_and_per_tenant_answer_429_and_recover() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    served.register(guests::CALCULATOR).await;

    // A key of its own rate: 2 per second.
    let limited = client_with(Some(&key(
        data.path(),
        &["--tenant", "rated", "--rate", "2"],
    )));
    let unlimited = client_with(Some(&key(data.path(), &["--tenant", "rated"])));
    assert_eq!(
        submit_status(&limited, &served).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        submit_status(&limited, &served).await.0,
        StatusCode::CREATED
    );
    let (status, retry_after) = submit_status(&limited, &served).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = retry_after.expect("a Retry-After header");
    // Another key of the same tenant is not held back by it.
    assert_eq!(
        submit_status(&unlimited, &served).await.0,
        StatusCode::CREATED
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        submit_status(&limited, &served).await.0,
        StatusCode::CREATED
    );

    // The tenant's rate, set by the operator through the CLI: every key of
    // the tenant shares it.
    let (code, _, err) = served.cli(&["quota", "capped", "--submits-per-second", "1"]);
    assert_eq!(code, 0, "{err}");
    let first = client_with(Some(&key(data.path(), &["--tenant", "capped"])));
    let second = client_with(Some(&key(data.path(), &["--tenant", "capped"])));
    assert_eq!(submit_status(&first, &served).await.0, StatusCode::CREATED);
    let (status, retry_after) = submit_status(&second, &served).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_secs(retry_after.expect("Retry-After"))).await;
    assert_eq!(submit_status(&second, &served).await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_the_tighter_of_the_operators_and_the_tenants_own() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    let admin = client_with(Some(&key(
        data.path(),
        &["--tenant", "q", "--role", "admin"],
    )));

    let (status, set) = ask(served.http.put(served.at("/v1/tenants/q/quota")).json(
        &json!({"weight": 3, "quota": {"max_queued": 10, "max_running": 4,
            "cost_budget_usd": 100.0}}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let (status, own) = ask(admin
        .put(served.at("/v1/tenants/q/quota"))
        .json(&json!({"quota": {"max_queued": 50, "max_running": 2, "cost_budget_usd": 20.5}})))
    .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(
        own["effective"],
        json!({"weight": 3, "quota": {"max_queued": 10, "max_running": 2,
            "submits_per_second": null, "max_cpu": null, "max_memory_mb": null, "max_gpus": null,
            "cost_budget_usd": 20.5}}),
        "{own}"
    );
    // A quota that means nothing is refused, and changes nothing.
    for nonsense in [
        json!({"submits_per_second": -1}),
        json!({"cost_budget_usd": -1}),
    ] {
        let (status, refused) = ask(admin
            .put(served.at("/v1/tenants/q/quota"))
            .json(&json!({ "quota": nonsense })))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    }
    // A tenant admin cannot set its weight, nor anyone else's quota.
    let (status, _) = ask(admin
        .put(served.at("/v1/tenants/q/quota"))
        .json(&json!({"weight": 100, "quota": {}})))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = ask(admin.get(served.at("/v1/tenants/other/quota"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Kept across a restart, and enforced: the 11th waiting job is refused.
    drop(served);
    let served = Served::start(data.path(), &[]);
    let (_, shown) = served.get("/v1/tenants/q/quota").await;
    assert_eq!(shown["effective"]["quota"]["max_queued"], 10, "{shown}");
    assert_eq!(
        shown["effective"]["quota"]["cost_budget_usd"], 20.5,
        "{shown}"
    );
    served.register(guests::CALCULATOR).await;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let response = admin
            .post(served.at("/v1/jobs"))
            .json(&json!({"kind": "tool_call",
                "payload": {"tool": "calculator", "args": {"op": "add", "a": 1, "b": 1}},
                "constraints": {"not_before": "2999-01-01T00:00:00Z"}}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(statuses[..10], [StatusCode::CREATED; 10]);
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);

    // The CLI, through the server, for a tenant whose name has a space.
    let (code, out, err) = served.cli(&["quota", "q two", "--max-queued", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["tenant"], "q two", "{shown}");
    assert_eq!(shown["effective"]["quota"]["max_queued"], 3, "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_seen_by_their_tenant_and_shared_ones_by_all() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    // Shared, by the operator, with a grant.
    let grant = data.path().join("shared-dir");
    std::fs::create_dir_all(&grant).unwrap();
    let (status, shared) = served
        .post_raw(
            &format!("/v1/tools?allow_dir={}", grant.display()),
            "application/wasm",
            std::fs::read(guests::TEXT_STATS).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shared}");
    assert!(shared.get("tenant").is_none(), "{shared}");

    let admin_a = client_with(Some(&key(
        data.path(),
        &["--tenant", "a", "--role", "admin"],
    )));
    let submit_b = client_with(Some(&key(data.path(), &["--tenant", "b"])));
    let calculator = || std::fs::read(guests::CALCULATOR).unwrap();
    // A tenant may not grant its tool anything of the host.
    let (status, refused) = ask(admin_a
        .post(served.at(&format!("/v1/tools?allow_dir={}", grant.display())))
        .header("content-type", "application/wasm")
        .body(calculator()))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["code"], "grant_forbidden");
    let (status, _) = ask(admin_a
        .post(served.at("/v1/tools"))
        .header("content-type", "application/wasm")
        .body(calculator()))
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let names = |tools: Value| -> Vec<String> {
        tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, tools) = ask(admin_a.get(served.at("/v1/tools"))).await;
    assert_eq!(names(tools), ["calculator", "text_stats"]);
    let (_, tools) = ask(submit_b.get(served.at("/v1/tools"))).await;
    assert_eq!(names(tools), ["text_stats"]);

    let call = |http: &reqwest::Client| {
        http.post(served.at("/v1/tools/calculator/call"))
            .json(&json!({"args": {"op": "add", "a": 2, "b": 3}}))
            .send()
    };
    let (status, done) = answer(call(&admin_a).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["result"], 5.0);
    let (status, refused) = answer(call(&submit_b).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["code"], "unknown_tool");
    // B cannot remove A's tool, nor the shared one.
    let (status, _) = ask(client_with(Some(&key(
        data.path(),
        &["--tenant", "b", "--role", "admin"],
    )))
    .delete(served.at("/v1/tools/text_stats")))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_names_who_changed_what() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    served.register(guests::CALCULATOR).await;
    let created = create_key(data.path(), &["--tenant", "audited", "--role", "admin"]);
    let admin = client_with(Some(created["key"].as_str().unwrap()));
    let key_id = created["id"].as_str().unwrap();
    let (status, job) = ask(admin
        .post(served.at("/v1/tools/calculator/call"))
        .json(&json!({"args": {"op": "add", "a": 1, "b": 1}})))
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let id = job["id"].as_str().unwrap();

    let (status, trail) = ask(admin.get(served.at(&format!("/v1/jobs/{id}/audit")))).await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let steps: Vec<(&str, &str)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("job.submitted", key_id),
            ("job.started", "engine"),
            ("job.completed", "engine"),
        ]
    );

    // The tenant's trail: its key's creation (on the command line) and its
    // job; the operator's own registration is not the tenant's.
    let (_, trail) = ask(admin.get(served.at("/v1/audit"))).await;
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "key.created", "{trail}");
    assert!(!actions.contains(&"tool.registered"), "{trail}");
    let (_, everything) = served.get("/v1/audit?limit=1000").await;
    assert!(
        everything["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "tool.registered"),
        "{everything}"
    );
}

#[tokio::test]
async fn serve_makes_the_operators_key_once_and_refuses_to_run_open_beyond_loopback() {
    let data = TempDir::new().unwrap();
    let start = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_work-engine"));
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .env("WORK_ENGINE_DATA_DIR", data.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stderr_of = |mut child: std::process::Child| {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        String::from_utf8(output.stderr).unwrap()
    };
    let first = stderr_of(start(&[]));
    let key = first
        .split_whitespace()
        .find(|word| word.starts_with("wk_live_"))
        .unwrap_or_else(|| panic!("no key in: {first}"))
        .to_owned();
    let second = stderr_of(start(&[]));
    assert!(!second.contains("wk_live_"), "{second}");
    let (_, out, _) = work_engine(data.path(), &["keys", "list", "--json"], &[]);
    let keys: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["operator"], true);
    assert!(key.starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert!(!out.contains(&key), "the list never shows a secret");

    let (code, _, err) = work_engine(
        data.path(),
        &["serve", "--addr", "0.0.0.0:0", "--insecure-no-auth"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("loopback"), "{err}");

    let open = Served::start(data.path(), &["--insecure-no-auth"]);
    let (status, jobs) = open.get("/v1/jobs?tenant=anyone").await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_calls_a_server_with_its_api_key() {
    let data = TempDir::new().unwrap();
    let served = Served::start(data.path(), &[]);
    let submitter = key(data.path(), &["--tenant", "cli"]);
    let elsewhere = TempDir::new().unwrap();
    let jobs = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["jobs", "list", "--json", "--server", &served.url];
        args.extend_from_slice(extra);
        work_engine(elsewhere.path(), &args, env)
    };
    let (code, _, err) = jobs(&[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("missing_key"), "{err}");
    let (code, out, err) = jobs(&["--api-key", &submitter], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"jobs\""), "{out}");
    let (code, _, err) = jobs(&[], &[("WORK_ENGINE_API_KEY", &submitter)]);
    assert_eq!(code, 0, "{err}");
    // The key decides the tenant: naming another is refused.
    let (code, _, err) = jobs(
        &["--tenant", "someone-else"],
        &[("WORK_ENGINE_API_KEY", &submitter)],
    );
    assert_eq!(code, 1);
    assert!(err.contains("tenant_mismatch"), "{err}");

    // An expiry past the end of time is a clear error, not a crash.
    let (code, _, err) = work_engine(
        data.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "cli",
            "--expires-in",
            "300000years",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("too far"), "{err}");

    // Keys through the server: an admin makes and revokes its tenant's.
    let admin = key(data.path(), &["--tenant", "cli", "--role", "admin"]);
    let with_admin = [("WORK_ENGINE_API_KEY", admin.as_str())];
    let (code, out, err) = work_engine(
        elsewhere.path(),
        &[
            "keys",
            "create",
            "--role",
            "worker",
            "--capabilities",
            "tool_call,training",
            "--json",
            "--tenant",
            "cli",
            "--server",
            &served.url,
        ],
        &with_admin,
    );
    assert_eq!(code, 0, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["tenant"], "cli");
    assert_eq!(made["role"], "worker");
    assert_eq!(made["capabilities"], json!(["tool_call", "training"]));
    let (code, out, err) = work_engine(
        elsewhere.path(),
        &["keys", "list", "--server", &served.url],
        &with_admin,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        4,
        "a header and cli's three keys: {out}"
    );
    let (code, _, err) = work_engine(
        elsewhere.path(),
        &[
            "keys",
            "revoke",
            made["id"].as_str().unwrap(),
            "--server",
            &served.url,
        ],
        &with_admin,
    );
    assert_eq!(code, 0, "{err}");
}

/// The audit trail keeps what its retention says: older entries go, newer
/// stay; without one (a command on the data directory) nothing goes.
#[test]
fn audit_entries_past_their_retention_are_dropped() {
    use work_engine::auth::{AuditQuery, AuthStore, NewKey};

    let data = TempDir::new().unwrap();
    let targets = |auth: &AuthStore| -> Vec<String> {
        let page = auth.audit(&AuditQuery::default()).unwrap();
        page.entries.into_iter().filter_map(|e| e.target).collect()
    };
    let auth = AuthStore::open(data.path()).unwrap();
    let old = auth.create_key(NewKey::operator()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(targets(&auth).contains(&old.id), "kept without a retention");

    auth.keep_audit_for(Duration::from_secs(1));
    let new = auth.create_key(NewKey::operator()).unwrap();
    let kept = targets(&auth);
    assert!(!kept.contains(&old.id), "{kept:?}");
    assert!(kept.contains(&new.id), "{kept:?}");

    // `serve` refuses a retention of no days.
    let (code, _, err) = work_engine(data.path(), &["serve", "--keep-audit-days", "0"], &[]);
    assert_eq!(code, 2, "{err}");
}
