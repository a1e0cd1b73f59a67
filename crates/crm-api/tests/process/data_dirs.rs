//! Data dirs written by others, as the process-level tests start the binary on them: the
//! store's first release before its first compaction, and the Node.js service it replaces.

use std::fs;
use std::path::Path;

use serde_json::json;
use uuid::Uuid;

use super::FUTURE;

/// One journal line of the first release: `<crc32> <entry>`, the entry scheduling one
/// follow-up with its event, in that release's record shapes.
fn first_release_line(tenant: &str, followup_id: Uuid) -> String {
    let correlation_id = Uuid::new_v4();
    let at = "2026-01-01T09:00:00.000Z";
    let entry = json!({
        "follow_ups": [{
            "followup_id": followup_id, "tenant_id": tenant, "campaign_id": null,
            "external_key": null, "lead_id": null, "customer_id": null,
            "phone_e164": "+5511999990001", "message": "From the first release",
            "schedule_at": FUTURE, "channel": "whatsapp", "status": "pending",
            "provider_message_id": null, "last_error_code": null, "last_error_message": null,
            "metadata": {}, "correlation_id": correlation_id,
            "trace_id": correlation_id.simple().to_string(), "created_at": at, "updated_at": at
        }],
        "events": [{
            "schema_version": "1.0.0", "kind": "event", "event_id": Uuid::new_v4(),
            "name": "crm.followup.scheduled", "tenant_id": tenant,
            "source_module": "mod-02-whatsapp-crm", "target_module": "mod-01-owner-concierge",
            "emitted_at": at, "correlation_id": correlation_id,
            "trace_id": correlation_id.simple().to_string(), "status": "info",
            "payload": {"followup_id": followup_id, "campaign_id": null, "channel": "whatsapp",
                        "schedule_at": FUTURE, "phone_e164": "+5511999990001"}
        }]
    });
    let json = serde_json::to_string(&entry).unwrap();
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

/// Writes the first release's data dir before its first compaction (one large journal
/// scheduling `count` follow-ups of `tenant`); returns their ids.
pub fn write_first_release(dir: &Path, tenant: &str, count: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let journal: String = ids
        .iter()
        .map(|id| first_release_line(tenant, *id))
        .collect();
    fs::write(dir.join("journal.000001.ndjson"), journal).unwrap();
    fs::write(dir.join(".lock"), b"").unwrap();
    ids
}

/// Writes the Node.js service's data dir (`count` follow-ups of `tenant`, as
/// `JSON.stringify(value, null, 2)` writes them); returns their ids and each file's bytes.
pub fn write_node(
    dir: &Path,
    tenant: &str,
    count: usize,
) -> (Vec<Uuid>, Vec<(&'static str, Vec<u8>)>) {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let follow_ups: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            json!({
                "followup_id": id, "tenant_id": tenant, "campaign_id": null,
                "external_key": format!("node-{id}"), "lead_id": null, "customer_id": null,
                "phone_e164": "+5511999990001", "message": "Olá!", "schedule_at": FUTURE,
                "channel": "whatsapp", "status": "pending", "provider_message_id": null,
                "last_error_code": null, "last_error_message": null, "metadata": {},
                "correlation_id": null, "trace_id": null,
                "created_at": "2025-02-01T10:00:00.000Z", "updated_at": "2025-02-01T10:00:00.000Z"
            })
        })
        .collect();
    let originals = vec![
        (
            "campaigns.json",
            serde_json::to_vec_pretty(&json!({"items": []})).unwrap(),
        ),
        (
            "followups.json",
            serde_json::to_vec_pretty(&json!({ "items": follow_ups })).unwrap(),
        ),
    ];
    for (name, bytes) in &originals {
        fs::write(dir.join(name), bytes).unwrap();
    }
    (ids, originals)
}
