//! Registration: what is accepted, what is refused and why, versions,
//! removal, and the compiled-artifact cache.

use crate::support::{host, host_with, wasm};
use serde_json::json;
use tempfile::TempDir;
use work_engine::Error;
use work_engine::registry::{ToolManifest, ToolScope};
use work_engine::runtime::{ArtifactSource, CallOptions, Grants};
use work_test_artifacts as guests;

#[tokio::test]
async fn register_stores_the_described_spec() {
    let dir = TempDir::new().unwrap();
    let host = host(&dir);
    let registered = host
        .register(&wasm(guests::CALCULATOR), Grants::default())
        .await
        .unwrap();
    let manifest = registered.manifest;
    assert_eq!(manifest.name, "calculator");
    assert_eq!(manifest.version, "0.1.0");
    assert_eq!(
        manifest.description,
        "Adds, subtracts, multiplies or divides two numbers."
    );
    assert_eq!(manifest.parameters["type"], "object");
    assert_eq!(
        manifest.parameters["properties"]["a"]["description"],
        "The left operand."
    );
    assert_eq!(manifest.parameters["required"], json!(["op", "a", "b"]));
    assert_eq!(manifest.result.as_ref().unwrap()["type"], "number");
    assert!(registered.replaced.is_none());
    assert!(
        dir.path()
            .join(format!("components/{}.wasm", manifest.component))
            .exists()
    );
    assert_eq!(
        host.list(ToolScope::Shared).unwrap(),
        vec![manifest.clone()]
    );

    // The same bytes again replace the same version.
    let again = host
        .register(&wasm(guests::CALCULATOR), Grants::default())
        .await
        .unwrap();
    assert_eq!(again.replaced.unwrap().component, manifest.component);
}

#[tokio::test]
async fn not_a_tool_is_refused_with_the_reason() {
    let dir = TempDir::new().unwrap();
    let host = host(&dir);
    let calculator = wasm(guests::CALCULATOR);
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"this is not wasm".to_vec(), "not_wasm"),
        ("empty", Vec::new(), "not_wasm"),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), "core_module"),
        (
            "truncated",
            calculator[..calculator.len() / 2].to_vec(),
            "invalid_component",
        ),
        ("other world", empty_component, "wrong_world"),
    ];
    for (what, bytes, code) in cases {
        let err = host.register(&bytes, Grants::default()).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    let err = host
        .register(b"\0asm\x0d\0\x01\0", Grants::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no export `call`"),
        "names the missing export: {err}"
    );
    assert!(host.list(ToolScope::Shared).unwrap().is_empty());
}

#[tokio::test]
async fn unusable_grants_are_refused() {
    let dir = TempDir::new().unwrap();
    let host = host(&dir);
    let grants = Grants {
        dirs: vec!["/no/such/dir:/data".parse().unwrap()],
        env: vec![],
    };
    let err = host
        .register(&wasm(guests::FILE_READ), grants)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Grant(_)), "{err:?}");
    // Nothing is left behind: no component, no compiled artifact.
    for sub in ["components", "cache"] {
        let left = std::fs::read_dir(dir.path().join(sub)).unwrap().count();
        assert_eq!(left, 0, "{sub}");
    }
}

#[tokio::test]
async fn versions_live_side_by_side_and_remove_cleans_up() {
    let (dir, host) = host_with(&[guests::CALCULATOR, guests::TEXT_STATS]).await;
    // A second version of calculator, as a newer build would register it.
    let mut newer: ToolManifest = host
        .versions(ToolScope::Shared, "calculator")
        .unwrap()
        .pop()
        .unwrap();
    newer.version = "0.10.0".into();
    host.registry()
        .put(&newer, &wasm(guests::CALCULATOR))
        .unwrap();

    let versions: Vec<String> = host
        .versions(ToolScope::Shared, "calculator")
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, ["0.1.0", "0.10.0"]);
    assert_eq!(
        host.prepare(ToolScope::Shared, "calculator")
            .unwrap()
            .manifest()
            .version,
        "0.10.0"
    );
    for name in ["calculator@0.1.0", "calculator@0.10.0"] {
        let report = host
            .call(
                name,
                r#"{"op": "add", "a": 1, "b": 1}"#,
                CallOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(report.outcome.unwrap(), json!(2.0), "{name}");
    }

    let removed = host.remove(ToolScope::Shared, "calculator@0.10.0").unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        host.prepare(ToolScope::Shared, "calculator")
            .unwrap()
            .manifest()
            .version,
        "0.1.0"
    );
    // Both versions share one component: still there.
    let component = dir
        .path()
        .join(format!("components/{}.wasm", newer.component));
    assert!(component.exists());

    host.remove(ToolScope::Shared, "calculator").unwrap();
    assert!(!component.exists(), "an unused component is deleted");
    let cached = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&newer.component)
        })
        .count();
    assert_eq!(cached, 0, "its artifacts too");
    assert!(matches!(
        host.call("calculator", "{}", CallOptions::default()).await,
        Err(Error::ToolNotFound { .. })
    ));
    assert!(matches!(
        host.remove(ToolScope::Shared, "calculator"),
        Err(Error::ToolNotFound { .. })
    ));
    assert_eq!(
        host.list(ToolScope::Shared).unwrap().len(),
        1,
        "text_stats stays"
    );
}

#[tokio::test]
async fn a_restart_loads_the_cached_artifact() {
    let dir = TempDir::new().unwrap();
    {
        let host = host(&dir);
        host.register(&wasm(guests::CALCULATOR), Grants::default())
            .await
            .unwrap();
    }
    // A new process (a new engine) on the same data directory.
    let host = host(&dir);
    let ready = host.prepare(ToolScope::Shared, "calculator").unwrap();
    assert_eq!(ready.source(), ArtifactSource::Cached);

    // Without the artifact it compiles once and caches again.
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert_eq!(
        crate::support::host(&dir)
            .prepare(ToolScope::Shared, "calculator")
            .unwrap()
            .source(),
        ArtifactSource::Compiled
    );
    assert_eq!(
        crate::support::host(&dir)
            .prepare(ToolScope::Shared, "calculator")
            .unwrap()
            .source(),
        ArtifactSource::Cached
    );

    // A corrupt artifact is discarded and rebuilt, not trusted.
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let host = crate::support::host(&dir);
    assert_eq!(
        host.prepare(ToolScope::Shared, "calculator")
            .unwrap()
            .source(),
        ArtifactSource::Compiled
    );
    let report = host
        .call(
            "calculator",
            r#"{"op": "add", "a": 1, "b": 1}"#,
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome.unwrap(), json!(2.0));
}
