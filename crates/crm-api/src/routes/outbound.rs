//! `POST /internal/outbound/claim`, `POST /internal/outbound/ack` and
//! `POST /internal/outbound/receipts`: the sender's side of the outbound queue, and what the
//! provider reports after acceptance.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use crm_app::Crm;
use crm_contracts::Contract;
use crm_domain::delivery::{LeaseId, Report};
use crm_domain::ids::{QueueItemId, TenantId};
use crm_domain::receipt::{Receipt, ReceiptStatus};
use crm_domain::timestamp::Timestamp;
use crm_ports::AckRequest;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::endpoint::{Access, Body, BodySize, Endpoint, Reply, Schema, Tag};
use crate::error::ApiError;
use crate::extract::{RawBody, contract_body, whole_number};

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::POST,
        path: "/internal/outbound/claim",
        access: Access::Internal,
        operation_id: "claim_outbound_items",
        tag: Tag::Outbound,
        summary: "Lease outbound items",
        description: "Leases up to `limit` ready items, oldest first, to the caller until \
            `lease_expires_at`. An item is leased to one consumer at a time; when a lease \
            expires unacknowledged the item is ready again and `attempt` grows by one (a \
            lease that runs out on the item's last attempt finishes it as failed, \
            `LEASE_EXPIRED`).",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::OutboundClaimRequest,
            required: false,
            description: "Optional: an empty body means `limit` 10 and `lease_ms` 30000.",
        }),
        reply: Reply {
            status: 200,
            description: "The items leased to this caller.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OutboundClaimResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(claim_outbound_items),
    },
    Endpoint {
        method: Method::POST,
        path: "/internal/outbound/ack",
        access: Access::Internal,
        operation_id: "ack_outbound_items",
        tag: Tag::Outbound,
        summary: "Report delivery results",
        description: "Records the result of each leased item under its lease, with the \
            follow-up's `delivery` and its event (`crm.followup.delivery.accepted`, \
            `.retrying` or `.failed`), atomically. A retryable failure with attempts left \
            makes the item ready again after `backoff_ms × 2^(attempt-1)` (±10 %). A failure \
            whose `error_code` the table of provider answers lists does what it says: pause \
            the follow-up's running campaign, opt the recipient out, finish, or retry no \
            sooner than a delay. Every ack is idempotent. \
            The answers say what became of the report, not of the message: `acked` when it \
            is recorded and the item done, accepted or failed for good; `lease_lost` when \
            the lease is not the item's current one (it ran out and the item was claimed \
            again, or it was never issued), and then nothing changes. `opt_out: true` adds \
            the recipient to the tenant's opt-out list (`crm.optout.added`, once).",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::OutboundAckRequest,
            required: true,
            description: "One result per leased item.",
        }),
        reply: Reply {
            status: 200,
            description: "What became of each ack, in request order.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OutboundAckResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(ack_outbound_items),
    },
    Endpoint {
        method: Method::POST,
        path: "/internal/outbound/receipts",
        access: Access::Internal,
        operation_id: "apply_delivery_receipts",
        tag: Tag::Outbound,
        summary: "Report what the provider said after acceptance",
        description: "Applies delivery receipts (WhatsApp's status webhooks: delivered, \
            read, failed) to the follow-ups whose accepted ack recorded each \
            `provider_message_id`, in request order, each atomically with its event \
            (`crm.followup.delivery.delivered`, `.read` or `.failed`) and the campaign's \
            `stats.delivery`. A delivery only moves forward (`accepted → delivered → read`, \
            `failed` from `accepted` or `delivered`): a receipt for a state already passed is \
            `stale`, a repeat `duplicate`, so repeated and reordered receipts end in the \
            state of one clean pass. A failed receipt is final (nothing is resent after \
            acceptance); its code pauses the campaign or opts the recipient out as the \
            table of provider answers says. `tenant_id` on a receipt limits it to that \
            tenant's messages.",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Batch,
            contract: Contract::OutboundReceiptsRequest,
            required: true,
            description: "1 to 1,000 receipts.",
        }),
        reply: Reply {
            status: 200,
            description: "What became of each receipt, in request order.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OutboundReceiptsResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(apply_delivery_receipts),
    },
];

#[derive(Deserialize)]
struct ClaimBody {
    #[serde(default = "default_limit", deserialize_with = "whole_number")]
    limit: u64,
    #[serde(default = "default_lease_ms", deserialize_with = "whole_number")]
    lease_ms: u64,
}

fn default_limit() -> u64 {
    10
}

fn default_lease_ms() -> u64 {
    30_000
}

async fn claim_outbound_items(
    crm: web::Data<Crm>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: ClaimBody = contract_body(
        crm.contracts(),
        Contract::OutboundClaimRequest,
        &body.0,
        Some(json!({})),
    )?;
    let leased = crm
        .claim(
            usize::try_from(body.limit).unwrap_or(usize::MAX),
            Duration::from_millis(body.lease_ms),
        )
        .await?;
    let items: Vec<_> = leased
        .iter()
        .map(|leased| {
            let lease = leased.entry.lease.expect("a leased item has a lease");
            json!({
                "lease_id": lease.lease_id.to_string(),
                "lease_expires_at": lease.expires_at,
                "attempt": leased.entry.attempt,
                "sender": leased.entry.sender,
                "item": leased.item,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

#[derive(Deserialize)]
struct AckBody {
    acks: Vec<AckFields>,
}

#[derive(Deserialize)]
struct AckFields {
    queue_item_id: Uuid,
    lease_id: Uuid,
    result: String,
    provider_message_id: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    #[serde(default)]
    retryable: bool,
    #[serde(default)]
    opt_out: bool,
}

async fn ack_outbound_items(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let body: AckBody =
        contract_body(crm.contracts(), Contract::OutboundAckRequest, &body.0, None)?;
    let acks: Vec<AckRequest> = body
        .acks
        .into_iter()
        .map(|ack| AckRequest {
            queue_item_id: QueueItemId::new(ack.queue_item_id),
            lease_id: LeaseId(ack.lease_id),
            report: Report {
                // The contract allows only `accepted` and `failed`.
                accepted: ack.result == "accepted",
                provider_message_id: ack.provider_message_id,
                error_code: ack.error_code,
                error_message: ack.error_message,
                retryable: ack.retryable,
                opt_out: ack.opt_out,
            },
        })
        .collect();
    let statuses = crm.ack(&acks).await?;
    let results: Vec<_> = acks
        .iter()
        .zip(statuses)
        .map(|(ack, status)| json!({"queue_item_id": ack.queue_item_id, "status": status.as_str()}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

#[derive(Deserialize)]
struct ReceiptsBody {
    receipts: Vec<ReceiptFields>,
}

#[derive(Deserialize)]
struct ReceiptFields {
    provider_message_id: String,
    tenant_id: Option<String>,
    status: String,
    at: Timestamp,
    error_code: Option<String>,
    error_message: Option<String>,
}

async fn apply_delivery_receipts(
    crm: web::Data<Crm>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: ReceiptsBody = contract_body(
        crm.contracts(),
        Contract::OutboundReceiptsRequest,
        &body.0,
        None,
    )?;
    let now = crm_app::now();
    let mut receipts = Vec::with_capacity(body.receipts.len());
    for (index, fields) in body.receipts.into_iter().enumerate() {
        let tenant_id = fields
            .tenant_id
            .map(|tenant| {
                TenantId::parse(tenant).ok_or_else(|| {
                    ApiError::violation(&format!("/receipts/{index}/tenant_id"), "not a tenant id")
                })
            })
            .transpose()?;
        let receipt = Receipt {
            provider_message_id: fields.provider_message_id,
            tenant_id,
            // The contract allows only the three words.
            status: ReceiptStatus::parse(&fields.status).ok_or_else(|| {
                ApiError::violation(&format!("/receipts/{index}/status"), "unknown status")
            })?,
            at: fields.at,
            error_code: fields.error_code,
            error_message: fields.error_message,
        };
        if receipt.is_from_the_future(now) {
            return Err(ApiError::violation(
                &format!("/receipts/{index}/at"),
                "is more than 5 minutes ahead of the service's clock",
            ));
        }
        receipts.push(receipt);
    }
    let answers = crm.apply_receipts(&receipts).await?;
    let results: Vec<_> = receipts
        .iter()
        .zip(answers)
        .map(|(receipt, answer)| {
            json!({"provider_message_id": receipt.provider_message_id, "status": answer.as_str()})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}
