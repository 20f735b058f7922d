//! What attempts spend: a backend's charges add up on the job and on its
//! tenant, a job is stopped once its charges pass its `max_cost_usd`, and a
//! tenant whose spending reached its `cost_budget_usd` is refused new jobs.

use std::time::Duration;

use serde_json::{Value, json};
use work_engine::backends::LocalBackend;
use work_engine::{
    Capacity, Engine, EngineError, ExecError, JobStatus, NewJob, OutcomeClass, Quota, Resources,
    RetryPolicy, TenantConfig,
};

use crate::support::submit_and_wait;

const LONG: Duration = Duration::from_secs(120);

/// `paid` jobs: `steps` steps 10 ms apart, each charging `charge` dollars;
/// between steps the attempt stops when told to, unless `ignore_stop`. The
/// first attempt fails (retryable) when `fail_first`. With `hang`, it
/// charges once and waits to be told to stop.
fn engine(tenant_budget: Option<f64>) -> Engine {
    let paid = LocalBackend::new().handle("paid", |job, ctx| async move {
        let payload: Value = job.payload.parse().unwrap();
        let field = |name: &str| payload[name].clone();
        let charge = field("charge").as_f64().unwrap_or(0.0);
        if field("hang") == Value::Bool(true) {
            ctx.charge(charge);
            ctx.cancelled().await;
            return Err(ExecError::new(OutcomeClass::Canceled, "stopped as told"));
        }
        for _ in 0..field("steps").as_u64().unwrap_or(1) {
            if ctx.is_cancelled() && field("ignore_stop") != Value::Bool(true) {
                return Err(ExecError::new(OutcomeClass::Canceled, "stopped as told"));
            }
            ctx.charge(charge);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if field("fail_first") == Value::Bool(true) && ctx.attempt() == 1 {
            return Err(ExecError::new(OutcomeClass::Retryable, "try again"));
        }
        Ok(json!({ "charged": ctx.charged() }))
    });
    Engine::builder()
        .capacity(Capacity {
            cpu: 4.0,
            memory_mb: 1024,
            gpus: Vec::new(),
        })
        .backend(paid)
        .tenant("metered", budget(tenant_budget))
        .build()
        .unwrap()
}

/// A tenant whose spending is capped at `usd` (none: no cap).
fn budget(usd: Option<f64>) -> TenantConfig {
    TenantConfig {
        quota: Quota {
            cost_budget_usd: usd,
            ..Quota::default()
        },
        ..TenantConfig::default()
    }
}

fn paid_job(tenant: &str, payload: Value, max_cost_usd: Option<f64>) -> NewJob {
    NewJob::new("paid", tenant, payload)
        .with_resources(Resources {
            max_cost_usd,
            ..Resources::default()
        })
        .with_retry_policy(RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 0,
            jitter: false,
            ..RetryPolicy::default()
        })
}

fn assert_near(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

/// What `tenant` has spent and what is held from its budget.
fn tenant_costs(engine: &Engine, tenant: &str) -> (f64, f64) {
    let stats = engine.stats();
    let tenant = stats.tenants.iter().find(|t| t.tenant_id == tenant);
    tenant.map_or((0.0, 0.0), |t| (t.cost_usd, t.cost_usd_held))
}

fn tenant_cost(engine: &Engine, tenant: &str) -> f64 {
    tenant_costs(engine, tenant).0
}

#[tokio::test(start_paused = true)]
async fn every_attempts_charges_add_up_on_the_job_and_its_tenant() {
    let engine = engine(None);
    let payload = json!({"charge": 0.25, "steps": 2, "fail_first": true});
    let done = submit_and_wait(&engine, paid_job("metered", payload, None), LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Succeeded, 2));
    // Two attempts of two steps at 0.25 each.
    assert_near(done.cost_usd, 1.0);
    assert_eq!(done.result, Some(json!({"charged": 0.5})));
    assert_near(tenant_cost(&engine, "metered"), 1.0);

    // Charges that are not money are ignored.
    for charge in [json!(-1.0), json!(0.0)] {
        let payload = json!({ "charge": charge });
        let done = submit_and_wait(&engine, paid_job("other", payload, None), LONG).await;
        assert_eq!((done.status, done.cost_usd), (JobStatus::Succeeded, 0.0));
    }
    assert_eq!(tenant_cost(&engine, "other"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_job_is_stopped_once_its_charges_pass_its_max_cost_usd() {
    let engine = engine(None);
    // 0.1 a step against a cap of 0.35: the fourth step passes it, and
    // the attempt stops before the fifth.
    let payload = json!({"charge": 0.1, "steps": 100});
    let done = submit_and_wait(&engine, paid_job("metered", payload, Some(0.35)), LONG).await;
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(done.outcome, Some(OutcomeClass::Canceled));
    assert_eq!(done.attempt, 1, "a job past its cap is not retried");
    let error = done.error.as_ref().unwrap();
    assert_eq!(error.code, "cost_limit");
    assert!(error.message.contains("0.35"), "{error:?}");
    assert_near(done.cost_usd, 0.4);

    // The cap counts every attempt: 0.45 spent by a failed first attempt
    // leaves 0.05 for the second, which its first step passes.
    let payload = json!({"charge": 0.15, "steps": 3, "fail_first": true});
    let done = submit_and_wait(&engine, paid_job("metered", payload, Some(0.5)), LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Canceled, 2));
    assert_eq!(done.error.as_ref().unwrap().code, "cost_limit");
    assert_near(done.cost_usd, 0.6);

    // Within its cap, a job runs to its end.
    let payload = json!({"charge": 0.1, "steps": 3});
    let done = submit_and_wait(&engine, paid_job("metered", payload, Some(0.35)), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_near(done.cost_usd, 0.3);

    // A backend that finishes its work although told to stop keeps its
    // result: the money is spent either way.
    let payload = json!({"charge": 0.1, "steps": 5, "ignore_stop": true});
    let done = submit_and_wait(&engine, paid_job("metered", payload, Some(0.35)), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_near(done.cost_usd, 0.5);
    assert_near(tenant_cost(&engine, "metered"), 0.4 + 0.6 + 0.3 + 0.5);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_whose_spending_reached_its_budget_is_refused_new_jobs() {
    let engine = engine(Some(1.0));
    let payload = json!({"charge": 0.6});
    // 0.6 spent: under the budget, so the next job is accepted, and it
    // takes the spending to 1.2.
    for _ in 0..2 {
        let done = submit_and_wait(&engine, paid_job("metered", payload.clone(), None), LONG).await;
        assert_eq!(done.status, JobStatus::Succeeded);
    }
    assert_near(tenant_cost(&engine, "metered"), 1.2);
    let refused = engine
        .submit(paid_job("metered", payload.clone(), None))
        .await
        .unwrap_err();
    match refused {
        EngineError::QuotaExceeded { tenant, limit, max } => {
            assert_eq!(
                (tenant.as_str(), limit, max.as_str()),
                ("metered", "cost_budget_usd", "1")
            );
        }
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    // Other tenants have budgets of their own (none here).
    let done = submit_and_wait(&engine, paid_job("other", payload.clone(), None), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);

    // A raised budget takes effect at once.
    engine.set_tenant("metered", budget(Some(2.0)));
    let done = submit_and_wait(&engine, paid_job("metered", payload, None), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_tenants_budget_holds_what_its_capped_jobs_may_still_spend() {
    let engine = engine(Some(1.0));
    let hang = json!({"charge": 0.1, "hang": true});
    let mut running = Vec::new();
    for _ in 0..2 {
        let job = paid_job("metered", hang.clone(), Some(0.4));
        running.push(engine.submit(job).await.unwrap().id);
    }
    assert_near(tenant_costs(&engine, "metered").1, 0.8);
    // A third job capped at 0.4 could take the spending past 1.0.
    let refused = engine
        .submit(paid_job("metered", hang.clone(), Some(0.4)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "quota_exceeded", "{refused:?}");
    // One without a cap fits in what is left.
    let free = paid_job("metered", json!({}), None);
    let done = submit_and_wait(&engine, free, LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);

    // Ended, the two jobs were charged 0.1 each and hold nothing more.
    for id in running {
        engine.cancel(id).await.unwrap();
        let done = engine.wait(id, LONG).await.unwrap();
        assert_eq!(done.status, JobStatus::Canceled);
        assert_near(done.cost_usd, 0.1);
    }
    assert_near(tenant_costs(&engine, "metered").1, 0.0);
    assert_near(tenant_cost(&engine, "metered"), 0.2);
    let capped = paid_job("metered", json!({"charge": 0.1}), Some(0.4));
    let done = submit_and_wait(&engine, capped, LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_near(tenant_cost(&engine, "metered"), 0.3);

    // A cap that is not money is refused.
    for cap in [-1.0, f64::NAN] {
        let err = engine
            .submit(paid_job("metered", json!({}), Some(cap)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_job", "{err:?}");
    }
}
