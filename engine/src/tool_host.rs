//! The registry and the sandbox together: register a component, call a
//! tool by name.

use crate::error::{Error, Result, Violation};
use crate::registry::{
    Registry, ToolManifest, ToolRef, ToolScope, check_name, check_version, schema,
};
use crate::runtime::{
    ArtifactSource, CallFailure, CallOptions, CallReport, Grants, LoadedComponent, Runtime,
    RuntimeConfig,
};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use crate::id_map::NameMap;

/// Registered tools, ready to be called in the sandbox.
///
/// One `ToolHost` per data directory and process. It keeps each tool it
/// has called compiled and linked in memory (`InstancePre`), with its
/// argument validator compiled, so a call costs a lookup, a validation, an
/// instantiation and the guest's own work.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use work_engine::{ToolHost, runtime::{CallOptions, Grants, RuntimeConfig}};
///
/// let host = ToolHost::open(".work-engine", RuntimeConfig::default())?;
/// let wasm = std::fs::read("target/wasm32-wasip2/release/calculator.wasm")?;
/// host.register(&wasm, Grants::default()).await?;
///
/// let report = host
///     .call("calculator", r#"{"op": "add", "a": 2, "b": 2}"#, CallOptions::default())
///     .await?;
/// assert_eq!(report.outcome?, serde_json::json!(4.0));
/// # Ok(()) }
/// ```
pub struct ToolHost {
    runtime: Runtime,
    registry: Registry,
    /// Tools loaded, by the tenant that looked them up.
    ready: RwLock<ReadyCache>,
}

/// The tools [`ToolHost`] keeps loaded.
#[derive(Default)]
struct ReadyCache {
    /// By the tenant that looked them up (`""` for the shared scope) and
    /// then by `name[@version]`: the same name can mean a different tool
    /// to each tenant.
    tools: NameMap<String, NameMap<String, Arc<ReadyTool>>>,
    /// Grows with every change to what a name means (a registration, a
    /// removal). A load that read the registry before such a change does
    /// not enter what it read: it may be the tool the change replaced.
    generation: u64,
}

impl std::fmt::Debug for ToolHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolHost")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// A tool compiled, linked and with its argument validator built.
pub struct ReadyTool {
    manifest: ToolManifest,
    component: LoadedComponent,
    validator: jsonschema::Validator,
    /// When it went into the cache, on the job ids' clock (`job_ids`): a
    /// job whose id is later was admitted against this very tool, since
    /// any change to what its name means drops the entry.
    cached: u64,
}

impl ReadyTool {
    /// The tool's registration.
    pub fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }

    /// Whether loading it compiled the component or reused the cache.
    pub fn source(&self) -> ArtifactSource {
        self.component.source()
    }

    /// Whether the job `id` was admitted in this process after this tool
    /// went into the cache, so its arguments were checked against this
    /// very schema then. An entry is dropped whenever what its name means
    /// changes (a registration, a removal), and one put back gets a new
    /// stamp; so if this one is still the tool the job's name finds now,
    /// it is the one its admission found.
    pub(crate) fn admitted(&self, id: work_host_api::JobId) -> bool {
        crate::job_ids::stamp_of(id).is_some_and(|job| job > self.cached)
    }

    /// Checks `args` against the parameter schema.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgs`] listing every violation with its JSON path.
    pub fn validate(&self, args: &serde_json::Value) -> Result<()> {
        let violations = schema::violations(&self.validator, args);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgs {
                tool: self.manifest.name.clone(),
                violations,
            })
        }
    }
}

/// A tool read from the registry and compiled, not yet in the cache.
struct Loading {
    /// The cache's generation before the registry was read.
    generation: u64,
    manifest: ToolManifest,
    component: LoadedComponent,
    validator: jsonschema::Validator,
}

/// What [`ToolHost::register`] did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The stored manifest.
    pub manifest: ToolManifest,
    /// The manifest this registration replaced (same name and version).
    pub replaced: Option<ToolManifest>,
}

impl ToolHost {
    /// Opens the registry in `data_dir` and builds the sandbox, caching
    /// compiled artifacts under `data_dir/cache`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the data directory cannot be created;
    /// [`Error::Runtime`] when wasmtime rejects the configuration.
    pub fn open(data_dir: impl Into<PathBuf>, mut config: RuntimeConfig) -> Result<Self> {
        let registry = Registry::open(data_dir)?;
        config.cache_dir = Some(registry.cache_dir());
        Ok(Self {
            runtime: Runtime::new(config)?,
            registry,
            ready: RwLock::default(),
        })
    }

    /// The sandbox, for its limits.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The on-disk registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a component: checks it is a `work:tool` component, runs
    /// its `describe` in the sandbox, validates and normalises the
    /// parameter schema, and stores component, spec and grants. A new
    /// version sits beside the old ones; the same version is replaced.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`], [`Error::CoreModule`], [`Error::InvalidComponent`],
    /// [`Error::WrongWorld`] for bytes that are not a tool;
    /// [`Error::InvalidSpec`] when `describe` fails or its spec is unusable;
    /// [`Error::Grant`] for an unusable grant; [`Error::Io`].
    ///
    /// # Cancel safety
    ///
    /// Files are written last, each atomically; a dropped future leaves the
    /// registry as it was or fully updated.
    pub async fn register(&self, wasm: &[u8], grants: Grants) -> Result<Registered> {
        self.register_in(ToolScope::Shared, wasm, grants).await
    }

    /// [`ToolHost::register`] among `scope`'s own tools: a tenant's tool
    /// is seen by that tenant only.
    ///
    /// # Errors
    ///
    /// As [`ToolHost::register`].
    pub async fn register_in(
        &self,
        scope: ToolScope<'_>,
        wasm: &[u8],
        grants: Grants,
    ) -> Result<Registered> {
        let component = self.runtime.load(wasm)?;
        let registered = self.register_loaded(scope, &component, wasm, grants).await;
        if registered.is_err() {
            // Loading cached a compiled artifact; drop it unless a
            // registered tool uses the same component.
            let _ = self.registry.collect_component(component.hash());
        }
        registered
    }

    async fn register_loaded(
        &self,
        scope: ToolScope<'_>,
        component: &LoadedComponent,
        wasm: &[u8],
        grants: Grants,
    ) -> Result<Registered> {
        let grants = grants.resolve()?;
        let spec = self.describe(component).await?;
        let invalid = |reason: String| Error::InvalidSpec { reason };
        let max = self.runtime.config().max_result_bytes;
        let size = spec.description.len()
            + spec.parameters.len()
            + spec.result.as_ref().map_or(0, String::len);
        if size > max {
            return Err(invalid(format!(
                "the spec is {size} bytes, over the {max}-byte limit"
            )));
        }
        check_name(&spec.name).map_err(invalid)?;
        check_version(&spec.version).map_err(invalid)?;
        let parameters = schema::declared(&spec.parameters)
            .and_then(|parameters| schema::check_parameters(&parameters).map(|()| parameters))
            .map_err(|err| invalid(format!("parameters: {err}")))?;
        let result = spec
            .result
            .as_deref()
            .map(schema::declared)
            .transpose()
            .map_err(|err| invalid(format!("result: {err}")))?;
        let manifest = ToolManifest {
            name: spec.name,
            version: spec.version,
            description: spec.description,
            parameters,
            result,
            component: component.hash().to_owned(),
            component_bytes: wasm.len() as u64,
            grants,
            registered_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string(),
            tenant: scope.tenant().map(str::to_owned),
        };
        let replaced = self.registry.put(&manifest, wasm)?;
        self.forget(scope, &manifest.name);
        tracing::info!(tool = %manifest.id(), component = %manifest.component, "registered tool");
        Ok(Registered { manifest, replaced })
    }

    async fn describe(
        &self,
        component: &LoadedComponent,
    ) -> Result<crate::runtime::bindings::types::ToolSpec> {
        let run = self
            .runtime
            .run(
                component,
                "describe",
                &Grants::default(),
                crate::runtime::call::Entry::Describe,
                CallOptions::default(),
            )
            .await?;
        match run.returned {
            Ok(crate::runtime::call::Returned::Spec(spec)) => Ok(spec),
            Ok(crate::runtime::call::Returned::Call(_)) => Err(Error::InvalidSpec {
                reason: "call ran instead of describe".into(),
            }),
            Err(CallFailure { class, message, .. }) => Err(Error::InvalidSpec {
                reason: format!("describe failed ({class}): {message}"),
            }),
        }
    }

    /// The newest version of every tool `scope` sees.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::CorruptRegistry`].
    pub fn list(&self, scope: ToolScope<'_>) -> Result<Vec<ToolManifest>> {
        self.registry.list(scope)
    }

    /// Every version of the tool `name` as `scope` sees it, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`] when none is registered.
    pub fn versions(&self, scope: ToolScope<'_>, name: &str) -> Result<Vec<ToolManifest>> {
        let versions = self.registry.versions(scope, name)?;
        if versions.is_empty() {
            return Err(Error::ToolNotFound {
                name: name.to_owned(),
            });
        }
        Ok(versions)
    }

    /// Removes `name@version`, or every version of `name`, among `scope`'s
    /// own tools.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`] when nothing matched.
    pub fn remove(&self, scope: ToolScope<'_>, tool: &str) -> Result<Vec<ToolManifest>> {
        let tool: ToolRef = tool.parse()?;
        let removed = self.registry.remove(scope, &tool)?;
        self.forget(scope, &tool.name);
        Ok(removed)
    }

    /// The tool `tool` (`name` or `name@version`) as `scope` sees it,
    /// compiled and ready, loading it on first use.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`]; load errors as in [`ToolHost::register`].
    pub fn prepare(&self, scope: ToolScope<'_>, tool: &str) -> Result<Arc<ReadyTool>> {
        if let Some(ready) = self.loaded(scope, tool) {
            return Ok(ready);
        }
        let loading = self.load(scope, tool)?;
        Ok(self.enter(scope, tool, loading))
    }

    /// Reads `tool` from the registry and compiles it.
    fn load(&self, scope: ToolScope<'_>, tool: &str) -> Result<Loading> {
        // Read before the registry: a registration or removal that lands
        // while this loads (compiling takes a while) moves it on.
        let generation = self.cache().generation;
        let tool_ref: ToolRef = tool.parse()?;
        let manifest = self.registry.get(scope, &tool_ref)?;
        let wasm = self.registry.component(&manifest)?;
        let component = self.runtime.load(&wasm)?;
        let validator =
            schema::compile(&manifest.parameters).map_err(|reason| Error::CorruptRegistry {
                path: PathBuf::from(manifest.id()),
                reason,
            })?;
        Ok(Loading {
            generation,
            manifest,
            component,
            validator,
        })
    }

    /// Puts a loaded tool in the cache, unless the registry changed since
    /// it was read: then it serves only the caller that loaded it (it was
    /// the tool when that call began), and the next lookup loads anew.
    fn enter(&self, scope: ToolScope<'_>, tool: &str, loading: Loading) -> Arc<ReadyTool> {
        let mut cache = self.ready.write().unwrap_or_else(PoisonError::into_inner);
        // Stamped under the lock, before anyone can find it: a lookup that
        // comes after the stamp waits for the lock, and finds this entry.
        let ready = Arc::new(ReadyTool {
            manifest: loading.manifest,
            component: loading.component,
            validator: loading.validator,
            cached: crate::job_ids::stamp(),
        });
        if cache.generation == loading.generation {
            cache
                .tools
                .entry(scope.tenant().unwrap_or_default().to_owned())
                .or_default()
                .insert(tool.to_owned(), Arc::clone(&ready));
        }
        ready
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, ReadyCache> {
        self.ready.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tool `tool` as `scope` sees it, if it is already loaded: never
    /// compiles, never touches the disk.
    pub fn loaded(&self, scope: ToolScope<'_>, tool: &str) -> Option<Arc<ReadyTool>> {
        self.cache()
            .tools
            .get(scope.tenant().unwrap_or_default())?
            .get(tool)
            .cloned()
    }

    /// Drops the in-memory entries of `name`, pinned or not, of every
    /// tenant that may see `scope`'s tool of that name.
    fn forget(&self, scope: ToolScope<'_>, name: &str) {
        let mut cache = self.ready.write().unwrap_or_else(PoisonError::into_inner);
        cache.generation += 1;
        for (tenant, tools) in cache.tools.iter_mut() {
            if scope == ToolScope::Shared || scope.tenant() == Some(tenant) {
                tools.retain(|key, _| key.split('@').next() != Some(name));
            }
        }
    }

    /// Calls the shared tool `tool` (`name` or `name@version`) with `args`
    /// (JSON text).
    ///
    /// The arguments are checked against the tool's schema before any
    /// instance exists; then the call runs in a fresh sandboxed instance.
    /// How the guest ended is in the report's outcome.
    ///
    /// # Errors
    ///
    /// Only when the call cannot start: [`Error::ToolNotFound`],
    /// [`Error::InvalidArgs`] (every violation, with its JSON path),
    /// [`Error::ArgsTooLarge`], [`Error::LimitOutOfRange`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the instance mid-call; prefer
    /// [`CallOptions::cancel`] to have the call end as `canceled`.
    pub async fn call(&self, tool: &str, args: &str, options: CallOptions) -> Result<CallReport> {
        let ready = self.prepare(ToolScope::Shared, tool)?;
        self.call_ready(&ready, args, options).await
    }

    /// [`ToolHost::call`] for a tool already prepared.
    ///
    /// # Errors
    ///
    /// As [`ToolHost::call`].
    pub async fn call_ready(
        &self,
        ready: &ReadyTool,
        args: &str,
        options: CallOptions,
    ) -> Result<CallReport> {
        self.check_args(ready, args)?;
        self.call_checked(ready, args, options).await
    }

    /// [`ToolHost::call_ready`] with the arguments already parsed: no
    /// second parse.
    ///
    /// # Errors
    ///
    /// As [`ToolHost::call`].
    pub async fn call_value(
        &self,
        ready: &ReadyTool,
        args: &serde_json::Value,
        options: CallOptions,
    ) -> Result<CallReport> {
        // `serde_json::to_string`, not `Display`: it starts with room for
        // the usual arguments instead of growing the string write by write.
        // It cannot fail for a `Value` (its keys are strings); `Display`
        // stands in all the same rather than an error nobody can meet.
        let text = serde_json::to_string(args).unwrap_or_else(|_| args.to_string());
        self.runtime.check_args_size(text.len())?;
        ready.validate(args)?;
        self.call_checked(ready, &text, options).await
    }

    /// Checks the JSON text `args` against `ready`'s limits and schema.
    ///
    /// # Errors
    ///
    /// [`Error::ArgsTooLarge`], or [`Error::InvalidArgs`] for text that is
    /// not JSON or does not match the schema.
    pub(crate) fn check_args(&self, ready: &ReadyTool, args: &str) -> Result<()> {
        self.runtime.check_args_size(args.len())?;
        let value: serde_json::Value =
            serde_json::from_str(args).map_err(|err| Error::InvalidArgs {
                tool: ready.manifest.name.clone(),
                violations: vec![Violation {
                    path: String::new(),
                    message: format!("arguments are not JSON: {err}"),
                }],
            })?;
        ready.validate(&value)
    }

    /// Calls `ready` with arguments [`ToolHost::check_args`] has passed:
    /// a job's, checked at its admission (see `WasmBackend::execute`).
    pub(crate) async fn call_checked(
        &self,
        ready: &ReadyTool,
        text: &str,
        options: CallOptions,
    ) -> Result<CallReport> {
        self.runtime
            .call(
                &ready.component,
                &ready.manifest.name,
                &ready.manifest.grants,
                text,
                options,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host on a fresh data directory with `calculator` registered, and
    /// the component's bytes.
    async fn with_calculator() -> (tempfile::TempDir, ToolHost, Vec<u8>) {
        let dir = tempfile::TempDir::new().unwrap();
        let host = ToolHost::open(dir.path(), RuntimeConfig::default()).unwrap();
        let wasm = std::fs::read(work_test_artifacts::CALCULATOR).unwrap();
        host.register(&wasm, Grants::default()).await.unwrap();
        (dir, host, wasm)
    }

    /// A load that read the registry before a registration or removal
    /// under the name landed serves its caller but stays out of the cache:
    /// entered, it would stand for the name until the next change.
    #[tokio::test]
    async fn a_load_that_raced_a_change_to_the_registry_is_not_cached() {
        let (_dir, host, wasm) = with_calculator().await;

        let loading = host.load(ToolScope::Shared, "calculator").unwrap();
        // Removed while the load compiled.
        host.remove(ToolScope::Shared, "calculator").unwrap();
        let ready = host.enter(ToolScope::Shared, "calculator", loading);
        assert_eq!(ready.manifest().name, "calculator");
        assert!(host.loaded(ToolScope::Shared, "calculator").is_none());
        assert!(matches!(
            host.prepare(ToolScope::Shared, "calculator"),
            Err(Error::ToolNotFound { .. })
        ));

        // Without a change in between, the load is cached.
        host.register(&wasm, Grants::default()).await.unwrap();
        let loading = host.load(ToolScope::Shared, "calculator").unwrap();
        let ready = host.enter(ToolScope::Shared, "calculator", loading);
        let cached = host.loaded(ToolScope::Shared, "calculator").unwrap();
        assert!(Arc::ptr_eq(&ready, &cached));
    }

    /// A job is taken as checked against a cached tool only if this
    /// process made its id after the tool went into the cache, and only
    /// while that entry stands: a new registration under the name drops
    /// it, and the entry loaded next checks the job again.
    #[tokio::test]
    async fn only_jobs_admitted_after_a_tool_was_cached_skip_the_second_check() {
        let (_dir, host, wasm) = with_calculator().await;
        let now = 1_763_900_000_000;
        let before = crate::job_ids::next(now);
        let ready = host
            .prepare(ToolScope::Tenant("acme"), "calculator")
            .unwrap();
        let after = crate::job_ids::next(now);
        assert!(!ready.admitted(before));
        assert!(ready.admitted(after));
        assert!(!ready.admitted(uuid::Uuid::now_v7()), "not an id of ours");

        host.register(&wasm, Grants::default()).await.unwrap();
        let reloaded = host
            .prepare(ToolScope::Tenant("acme"), "calculator")
            .unwrap();
        assert!(!Arc::ptr_eq(&ready, &reloaded));
        assert!(!reloaded.admitted(after));
        assert!(reloaded.admitted(crate::job_ids::next(now)));
    }
}
