//! Sending policy, opt-outs, single records and cancel: what an operator or a client uses
//! to see and steer what goes out before the drain hands it over.

use crm_domain::campaign::{Campaign, CampaignStats};
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::opt_out::{self, OptOut, OptOutSource};
use crm_domain::policy::SendingPolicy;
use crm_ports::{Created, NewOptOut, OptOutPage, OptOutQuery, StoreError};

use crate::error::AppError;
use crate::service::{CommandStatus, Crm, Outcome, new_correlation_id, new_trace_id, now};

/// How many times a cancel re-reads a follow-up that changed under it.
const CANCEL_ATTEMPTS: usize = 5;

/// The policy the drain applies to a tenant, and whether the tenant set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInForce {
    pub policy: SendingPolicy,
    /// `false`: the tenant set none; the service's default applies.
    pub own: bool,
}

impl Crm {
    /// A campaign with the counts of its follow-ups.
    #[tracing::instrument(name = "campaign_with_stats", skip_all, fields(tenant_id = %tenant_id, campaign_id = %campaign_id))]
    pub async fn campaign_with_stats(
        &self,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<(Campaign, CampaignStats), AppError> {
        let campaign = self
            .reads
            .campaign(tenant_id, campaign_id)
            .await?
            .ok_or(AppError::NotFound)?;
        let stats = self.reads.campaign_stats(campaign_id).await?;
        Ok((campaign, stats))
    }

    #[tracing::instrument(name = "follow_up", skip_all, fields(tenant_id = %tenant_id, followup_id = %followup_id))]
    pub async fn follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
    ) -> Result<FollowUp, AppError> {
        self.reads
            .follow_up(tenant_id, followup_id)
            .await?
            .ok_or(AppError::NotFound)
    }

    /// Cancels a pending follow-up: it fails with `CANCELED` and its event. A repeat is
    /// `idempotent`; a follow-up sent or failed otherwise cannot be canceled.
    #[tracing::instrument(name = "cancel_follow_up", skip_all, fields(tenant_id = %tenant_id, followup_id = %followup_id))]
    pub async fn cancel_follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
        correlation_id: Option<CorrelationId>,
    ) -> Result<Outcome<FollowUp>, AppError> {
        for _ in 0..CANCEL_ATTEMPTS {
            let current = self
                .store
                .follow_up(tenant_id, followup_id)
                .await?
                .ok_or(AppError::NotFound)?;
            let echoed = correlation_id.unwrap_or(current.correlation_id);
            let now = now();
            let Some((canceled, event)) = current
                .cancel(now)
                .map_err(|final_state| AppError::NotPending(final_state.status))?
            else {
                return Ok(Outcome {
                    status: CommandStatus::Idempotent,
                    record: current,
                    correlation_id: echoed,
                    lifecycle_event_name: None,
                });
            };
            let envelope = self.follow_up_envelope(&canceled, &event, now)?;
            let name = event.name();
            if self
                .store
                .save_follow_up(&canceled, FollowUpStatus::Pending, &[envelope])
                .await?
            {
                metrics::counter!(
                    crate::metrics::FOLLOW_UPS_FAILED,
                    "error_code" => canceled.last_error_code.clone().unwrap_or_default()
                )
                .increment(1);
                return Ok(Outcome {
                    status: CommandStatus::Updated,
                    record: canceled,
                    correlation_id: echoed,
                    lifecycle_event_name: Some(name),
                });
            }
            // A drain took it meanwhile: decide again on what it is now.
        }
        Err(AppError::Unavailable(StoreError::unavailable(
            "the follow-up kept changing while it was being canceled",
        )))
    }

    #[tracing::instrument(name = "sending_policy", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn sending_policy(&self, tenant_id: &TenantId) -> Result<PolicyInForce, AppError> {
        let own = self.store.sending_policy(tenant_id).await?;
        let (policy, _) = self.policy_in_force(own.as_ref());
        Ok(PolicyInForce {
            policy,
            own: own.is_some(),
        })
    }

    #[tracing::instrument(name = "set_sending_policy", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn set_sending_policy(
        &self,
        tenant_id: &TenantId,
        policy: SendingPolicy,
    ) -> Result<PolicyInForce, AppError> {
        self.store.put_sending_policy(tenant_id, &policy).await?;
        Ok(PolicyInForce { policy, own: true })
    }

    /// Removes the tenant's policy, so that the service's default applies again; `false`
    /// when it had none.
    #[tracing::instrument(name = "remove_sending_policy", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn remove_sending_policy(&self, tenant_id: &TenantId) -> Result<bool, AppError> {
        Ok(self.store.remove_sending_policy(tenant_id).await?)
    }

    /// Adds a number to the tenant's opt-out list; `Existing` when it was there already.
    #[tracing::instrument(name = "add_opt_out", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn add_opt_out(
        &self,
        tenant_id: TenantId,
        phone_e164: String,
        reason: Option<String>,
        correlation_id: Option<CorrelationId>,
    ) -> Result<Created<OptOut>, AppError> {
        let now = now();
        let opt_out = OptOut {
            tenant_id,
            phone_e164,
            reason,
            created_at: now,
        };
        let event = self.envelope(
            &opt_out.added(OptOutSource::Api),
            &opt_out.tenant_id,
            correlation_id.unwrap_or_else(new_correlation_id),
            &new_trace_id(),
            now,
        )?;
        Ok(self
            .store
            .add_opt_out(&NewOptOut { opt_out, event })
            .await?)
    }

    /// Takes a number off the tenant's opt-out list; `false` when it was not on it.
    #[tracing::instrument(name = "remove_opt_out", skip_all, fields(tenant_id = %tenant_id))]
    pub async fn remove_opt_out(
        &self,
        tenant_id: &TenantId,
        phone_e164: &str,
    ) -> Result<bool, AppError> {
        let event = self.envelope(
            &opt_out::removed(phone_e164, OptOutSource::Api),
            tenant_id,
            new_correlation_id(),
            &new_trace_id(),
            now(),
        )?;
        Ok(self
            .store
            .remove_opt_out(tenant_id, phone_e164, &event)
            .await?)
    }

    #[tracing::instrument(name = "opt_outs", skip_all, fields(tenant_id = %query.tenant_id))]
    pub async fn opt_outs(&self, query: &OptOutQuery) -> Result<OptOutPage, AppError> {
        let query = OptOutQuery {
            limit: query.limit.clamp(1, crm_domain::page::MAX_LIMIT),
            ..query.clone()
        };
        Ok(self.store.opt_outs(&query).await?)
    }
}
