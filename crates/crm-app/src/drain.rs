//! The worker drain: hand due follow-ups to the outbound queue, exactly once.
//!
//! The store claims due follow-ups and commits each decision atomically with its claim;
//! this module only decides. Per lane: a campaign that holds its follow-ups, and quiet
//! hours in the recipient's time zone. Per tenant: whether its policy (or the default
//! rate) limits it, and so must be counted exactly; the limits themselves are the
//! domain's (`crm_domain::limits`), applied by the plan to what the store's ledger says.
//! Per follow-up: gating (campaign, opt-out), then the outbound item against its
//! contract, then the operator's `force_failure` switch.

use crm_contracts::Contract;
use std::collections::BTreeMap;

use crm_domain::event::DomainEvent;
use crm_domain::follow_up::{self, AlreadyFinal, FailureReason, FollowUp, Gate};
use crm_domain::ids::QueueItemId;
use crm_domain::outbound::OutboundItem;
use crm_domain::policy::{SendingPolicy, TimeZoneName};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    DispatchDecision, Dispatcher, DrainOutcome, DrainPlan, DrainStatus, DueFollowUp, HoldReason,
    LaneState, Limited, Planner, SkipReason,
};
use uuid::Uuid;

use crate::error::AppError;
use crate::metrics as names;
use crate::service::{Crm, now};

/// The most follow-ups one drain call handles; larger requests are served this many.
pub const MAX_DRAIN_LIMIT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainCommand {
    pub limit: usize,
    /// Fail every dispatched follow-up with `PROVIDER_SEND_ERROR` (an operator switch).
    pub force_failure: bool,
}

impl Default for DrainCommand {
    fn default() -> Self {
        Self {
            limit: 10,
            force_failure: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    pub outcomes: Vec<DrainOutcome>,
}

impl DrainReport {
    pub fn count(&self, status: DrainStatus) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }
}

struct Decide<'a> {
    crm: &'a Crm,
    now: Timestamp,
    force_failure: bool,
}

impl Crm {
    #[tracing::instrument(name = "drain", skip_all, fields(limit = command.limit))]
    pub async fn drain(&self, command: DrainCommand) -> Result<DrainReport, AppError> {
        let limit = command.limit.clamp(1, MAX_DRAIN_LIMIT);
        let now = now();
        let decide = Decide {
            crm: self,
            now,
            force_failure: command.force_failure,
        };
        let started = std::time::Instant::now();
        let outcomes = self.store.drain(now, limit, &decide).await?;
        metrics::histogram!(names::DRAIN_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(names::DRAIN_BATCH).record(outcomes.len() as f64);
        for outcome in &outcomes {
            match outcome.status {
                DrainStatus::Sent => metrics::counter!(names::FOLLOW_UPS_SENT).increment(1),
                DrainStatus::Failed => metrics::counter!(
                    names::FOLLOW_UPS_FAILED,
                    "error_code" => outcome.reason.clone().unwrap_or_default()
                )
                .increment(1),
                DrainStatus::Skipped => metrics::counter!(names::FOLLOW_UPS_SKIPPED).increment(1),
            }
        }
        Ok(DrainReport { outcomes })
    }

    /// Follow-ups due right now, for the metrics gauge.
    pub async fn count_due(&self) -> Result<u64, AppError> {
        Ok(self
            .store
            .count_due(now(), &follow_up::holding_states())
            .await?)
    }
}

impl Planner for Decide<'_> {
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
        self.crm.plan(lanes, self.now)
    }
}

impl Dispatcher for Decide<'_> {
    fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
        let follow_up = &due.follow_up;
        match follow_up::gate(due.campaign_state, due.recipient_opted_out) {
            Gate::Hold => DispatchDecision::Skip {
                reason: SkipReason::CampaignPaused,
            },
            Gate::Fail(reason) => self.fail(follow_up, reason),
            Gate::Dispatch => self.dispatch(follow_up),
        }
    }
}

impl Decide<'_> {
    fn dispatch(&self, follow_up: &FollowUp) -> DispatchDecision {
        let item_id = QueueItemId::new(Uuid::new_v4());
        let item = OutboundItem::for_follow_up(follow_up, item_id, self.now);
        let json = serde_json::to_value(&item).expect("an outbound item always serializes");
        if let Err(violations) = self
            .crm
            .contracts
            .validate(Contract::OutboundQueueItem, &json)
        {
            tracing::warn!(followup_id = %follow_up.followup_id, ?violations, "outbound item breaks its contract");
            return self.fail(follow_up, FailureReason::OutboundContractInvalid);
        }
        if self.force_failure {
            return self.fail(follow_up, FailureReason::ProviderSendError);
        }
        match follow_up.mark_sent(item_id, self.now) {
            Ok((sent, event)) => match self.events(&sent, &event) {
                Ok(events) => DispatchDecision::Send {
                    follow_up: Box::new(sent),
                    item: Box::new(item),
                    events,
                },
                Err(skip) => skip,
            },
            Err(final_state) => not_pending(final_state),
        }
    }

    fn fail(&self, follow_up: &FollowUp, reason: FailureReason) -> DispatchDecision {
        match follow_up.mark_failed(reason, self.now) {
            Ok((failed, event)) => match self.events(&failed, &event) {
                Ok(events) => DispatchDecision::Fail {
                    follow_up: Box::new(failed),
                    events,
                },
                Err(skip) => skip,
            },
            Err(final_state) => not_pending(final_state),
        }
    }

    /// The follow-up's event, in its own correlation and trace. An event that breaks its
    /// contract is a bug on our side: the follow-up stays pending rather than move
    /// without its event.
    fn events(
        &self,
        follow_up: &FollowUp,
        event: &DomainEvent,
    ) -> Result<Vec<crm_domain::event::EventEnvelope>, DispatchDecision> {
        self.crm
            .envelope(
                event,
                &follow_up.tenant_id,
                follow_up.correlation_id,
                &follow_up.trace_id,
                self.now,
            )
            .map(|envelope| vec![envelope])
            .map_err(|error| {
                tracing::error!(followup_id = %follow_up.followup_id, %error, "follow-up event rejected");
                DispatchDecision::Skip {
                    reason: SkipReason::EventContractInvalid,
                }
            })
    }
}

fn not_pending(final_state: AlreadyFinal) -> DispatchDecision {
    tracing::debug!(%final_state, "a claimed follow-up was not pending");
    DispatchDecision::Skip {
        reason: SkipReason::NotPending,
    }
}

impl Crm {
    /// The policy in force for a tenant that stores `own` (or none), and its rate.
    pub(crate) fn policy_in_force(
        &self,
        own: Option<&SendingPolicy>,
    ) -> (SendingPolicy, Option<u32>) {
        match own {
            Some(policy) => (policy.clone(), policy.max_per_second),
            None => (
                SendingPolicy {
                    max_per_second: self.default_send_rate,
                    ..SendingPolicy::default()
                },
                self.default_send_rate,
            ),
        }
    }

    /// Which of `lanes` a drain at `now` may take from, and which tenants it must count
    /// exactly (and what to ask about them).
    pub(crate) fn plan(&self, lanes: &[LaneState], now: Timestamp) -> DrainPlan {
        let mut plan = DrainPlan::new(now);
        let mut limited = BTreeMap::new();
        for lane in lanes {
            if lane_hold(lane, now).is_some() {
                continue;
            }
            let tenant_id = &lane.lane.tenant_id;
            if !limited.contains_key(tenant_id) {
                let (policy, rate) = self.policy_in_force(lane.policy.as_ref());
                let needs = policy.needs(rate);
                if needs.any() {
                    limited.insert(
                        tenant_id.clone(),
                        Limited {
                            tenant_id: tenant_id.clone(),
                            policy,
                            rate,
                            needs,
                        },
                    );
                }
            }
            plan.open.push(lane.lane.clone());
        }
        plan.limited = limited.into_values().collect();
        plan
    }
}

/// What holds a whole lane at `now`: its campaign, or quiet hours in its recipients'
/// time zone (the policy's when the lane names none). `None`: it is open.
pub(crate) fn lane_hold(lane: &LaneState, now: Timestamp) -> Option<HoldReason> {
    if follow_up::gate(lane.campaign_state, false) == Gate::Hold {
        return Some(HoldReason::CampaignPaused);
    }
    // A zone this service accepted at create; any other (none) means the policy's.
    let zone = lane
        .lane
        .time_zone
        .as_deref()
        .and_then(|name| TimeZoneName::parse(name).ok());
    let quiet = lane
        .policy
        .as_ref()
        .and_then(|policy| policy.quiet_hours.as_ref())
        .is_some_and(|quiet| quiet.contains(zone.as_ref(), now));
    quiet.then_some(HoldReason::QuietHours)
}
