//! The HTTP client the commands use with `--server URL`.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

/// A `work-engine serve` at `base`, called with an API key when given one.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
}

/// A refusal from the server: its problem document.
#[derive(Debug, thiserror::Error)]
#[error("{detail} ({code}, HTTP {status})")]
pub(super) struct Refused {
    pub(super) status: u16,
    pub(super) code: String,
    pub(super) detail: String,
}

impl Remote {
    pub(super) fn new(base: &str, api_key: Option<&str>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            api_key: api_key.map(str::to_owned),
        }
    }

    pub(super) async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.request(Method::GET, self.url(path)))
            .await
    }

    pub(super) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub(super) async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/wasm")
            .body(body);
        self.send(request).await
    }

    pub(super) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("the server at {} did not answer in full", self.base))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
        Err(Refused {
            status: status.as_u16(),
            code: field("code"),
            detail: field("detail"),
        }
        .into())
    }
}

/// `key=value` pairs as a query string, values escaped.
pub(super) fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value {
            out.append_pair(key, value);
        }
    }
    let out = out.finish();
    if out.is_empty() {
        out
    } else {
        format!("?{out}")
    }
}
