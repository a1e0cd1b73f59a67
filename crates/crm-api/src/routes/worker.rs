//! `POST /internal/worker/crm-followups/drain`.

use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use crm_app::{Crm, DrainCommand, DrainReport};
use crm_contracts::Contract;
use crm_ports::DrainStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::endpoint::{Access, Body, BodySize, Endpoint, Reply, Schema, Tag};
use crate::error::ApiError;
use crate::extract::{RawBody, contract_body, optional_whole_number};

pub(super) static ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: Method::POST,
    path: "/internal/worker/crm-followups/drain",
    access: Access::Internal,
    operation_id: "drain_follow_ups",
    tag: Tag::Worker,
    summary: "Dispatch due follow-ups",
    description: "Takes due pending follow-ups (oldest `schedule_at` first), hands each to the \
        outbound queue exactly once and marks it `sent`, or `failed` when its outbound item \
        breaks the contract, `force_failure` is set or its campaign is canceled or failed. \
        Follow-ups of a paused campaign wait; an outage leaves them pending.",
    parameters: &[],
    body: Some(Body {
        size: BodySize::Standard,
        contract: Contract::DrainRequest,
        required: false,
        description: "Optional: an empty body means the defaults (`limit` 10, `force_failure` \
            false); a `limit` above 100 is served as 100.",
    }),
    reply: Reply {
        status: 200,
        description: "What the drain did with each follow-up it took.",
        media_type: "application/json",
        schema: Schema::Contract(Contract::DrainResponse),
    },
    errors: &[],
    uses_store: true,
    handler: |route| route.to(drain_follow_ups),
}];

#[derive(Deserialize)]
struct DrainBody {
    #[serde(default, deserialize_with = "optional_whole_number")]
    limit: Option<u64>,
    #[serde(default)]
    force_failure: bool,
}

async fn drain_follow_ups(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let body: DrainBody = contract_body(
        crm.contracts(),
        Contract::DrainRequest,
        &body.0,
        Some(json!({})),
    )?;
    let defaults = DrainCommand::default();
    let command = DrainCommand {
        // The use case caps the limit.
        limit: body.limit.map_or(defaults.limit, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        }),
        force_failure: body.force_failure,
    };
    let report = crm.drain(command).await?;
    Ok(HttpResponse::Ok().json(report_json(&report)))
}

pub(crate) fn report_json(report: &DrainReport) -> Value {
    let processed: Vec<Value> = report
        .outcomes
        .iter()
        .map(|outcome| {
            let mut item = json!({
                "followup_id": outcome.followup_id,
                "status": status_word(outcome.status),
            });
            if let Some(reason) = &outcome.reason {
                item["reason"] = json!(reason);
            }
            item
        })
        .collect();
    json!({
        "processed_count": report.outcomes.len(),
        "succeeded_count": report.count(DrainStatus::Sent),
        "failed_count": report.count(DrainStatus::Failed),
        "skipped_count": report.count(DrainStatus::Skipped),
        "processed": processed,
    })
}

fn status_word(status: DrainStatus) -> &'static str {
    match status {
        DrainStatus::Sent => "sent",
        DrainStatus::Failed => "failed",
        DrainStatus::Skipped => "skipped",
    }
}
