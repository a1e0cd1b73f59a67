//! Why work waits: a tenant's due pending follow-ups counted by the first rule that holds
//! each, and where its day's budget of recipients stands.
//!
//! The counts come from the same plan and the same admission a drain uses, walked over
//! every due follow-up as if the drain had no batch size, so the status says exactly what
//! a drain would do now. Nothing is written.

use std::collections::BTreeMap;

use crm_domain::ids::TenantId;
use crm_domain::policy::SendingPolicy;
use crm_domain::timestamp::Timestamp;
use crm_ports::drain::held_reasons;
use crm_ports::{DrainPlan, HoldReason, LaneState, Limited, Planner, UsageNeeds};

use crate::drain::lane_hold;
use crate::error::AppError;
use crate::sending::PolicyInForce;
use crate::service::{Crm, now};

/// The most due follow-ups of one tenant a status reads: past it, counts are a floor.
pub const STATUS_CAP: usize = 100_000;

/// The same for the metrics, read at every scrape for every tenant.
pub const METRICS_CAP: usize = 10_000;

/// What holds a tenant's work, and its budget of recipients.
#[derive(Debug, Clone, PartialEq)]
pub struct SendingStatus {
    pub tenant_id: TenantId,
    pub due_pending: u64,
    /// Due follow-ups by the first rule that holds each (every reason, zero included).
    pub held: BTreeMap<HoldReason, u64>,
    /// Distinct recipients sent to in the day that ends now.
    pub recipients_used: u64,
    pub recipient_limit: Option<u32>,
    /// When the next counted recipient stops counting.
    pub next_release_at: Option<Timestamp>,
    /// More due follow-ups than `STATUS_CAP`: the counts are a floor.
    pub truncated: bool,
    pub policy: PolicyInForce,
}

/// Plans as a drain at `now` would, and asks everything about `ask` (the tenant of a
/// status) whether or not its policy limits it.
struct StatusPlanner<'a> {
    crm: &'a Crm,
    now: Timestamp,
    ask: Option<(&'a TenantId, &'a SendingPolicy, Option<u32>)>,
}

impl Planner for StatusPlanner<'_> {
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
        let mut plan = self.crm.plan(lanes, self.now);
        if let Some((tenant_id, policy, rate)) = self.ask {
            plan.limited.retain(|l| &l.tenant_id != tenant_id);
            plan.limited.push(Limited {
                tenant_id: tenant_id.clone(),
                policy: policy.clone(),
                rate,
                needs: UsageNeeds {
                    sends: true,
                    recipients: true,
                    recipient_history: true,
                },
            });
        }
        plan
    }
}

impl Crm {
    #[tracing::instrument(name = "sending_status", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn sending_status(&self, tenant_id: &TenantId) -> Result<SendingStatus, AppError> {
        let own = self.store.sending_policy(tenant_id).await?;
        let (policy, rate) = self.policy_in_force(own.as_ref());
        let now = now();
        let planner = StatusPlanner {
            crm: self,
            now,
            ask: Some((tenant_id, &policy, rate)),
        };
        let (plan, facts) = self
            .store
            .sending_facts(Some(tenant_id), now, STATUS_CAP, &planner)
            .await?;
        let mut held: BTreeMap<HoldReason, u64> = HoldReason::ALL
            .into_iter()
            .map(|reason| (reason, 0))
            .collect();
        let reasons = held_reasons(&plan, &facts, |lane| lane_hold(lane, now));
        for reason in reasons.iter().filter_map(|(_, reason)| *reason) {
            *held.entry(reason).or_default() += 1;
        }
        Ok(SendingStatus {
            tenant_id: tenant_id.clone(),
            due_pending: reasons.len() as u64,
            held,
            recipients_used: facts.usage.get(tenant_id).map_or(0, |u| u.recipients),
            recipient_limit: policy.daily_recipient_limit,
            next_release_at: facts.next_release_at.get(tenant_id).copied(),
            truncated: facts.truncated.contains(tenant_id),
            policy: PolicyInForce {
                policy,
                own: own.is_some(),
            },
        })
    }

    /// Every tenant's due follow-ups by the first rule that holds each, for the metrics
    /// (each tenant counted up to `METRICS_CAP`).
    pub async fn held_counts(&self) -> Result<BTreeMap<HoldReason, u64>, AppError> {
        let now = now();
        let planner = StatusPlanner {
            crm: self,
            now,
            ask: None,
        };
        let (plan, facts) = self
            .store
            .sending_facts(None, now, METRICS_CAP, &planner)
            .await?;
        let mut held: BTreeMap<HoldReason, u64> = HoldReason::ALL
            .into_iter()
            .map(|reason| (reason, 0))
            .collect();
        let reasons = held_reasons(&plan, &facts, |lane| lane_hold(lane, now));
        for reason in reasons.into_iter().filter_map(|(_, reason)| reason) {
            *held.entry(reason).or_default() += 1;
        }
        Ok(held)
    }
}
