//! `POST /internal/worker/crm-followups/drain`.

use actix_web::{HttpResponse, web};
use crm_app::{Crm, DrainCommand, DrainReport};
use crm_contracts::Contract;
use crm_ports::DrainStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{RawBody, contract_body};

#[derive(Deserialize)]
struct DrainBody {
    /// A float so that `5.0`, which JSON Schema counts as an integer, reads as 5.
    limit: Option<f64>,
    #[serde(default)]
    force_failure: bool,
}

pub async fn drain_follow_ups(
    crm: web::Data<Crm>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: DrainBody = contract_body(
        crm.contracts(),
        Contract::DrainRequest,
        &body.0,
        Some(json!({})),
    )?;
    let defaults = DrainCommand::default();
    let command = DrainCommand {
        // The contract guarantees a whole number >= 1; `as` saturates past `usize`, and
        // the use case caps it.
        limit: body.limit.map_or(defaults.limit, |limit| limit as usize),
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
