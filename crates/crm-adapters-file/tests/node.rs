//! Adopting the data dir of the Node.js service: `tests/fixtures/node` holds its two
//! files exactly as it wrote them (`JSON.stringify(value, null, 2)`).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crm_adapters_file::{FileStore, FileStoreOptions, OpenError};
use crm_app::adoption::LegacyRules;
use crm_contracts::Contracts;
use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use crm_ports::adoption::{AdoptionCheck, RecordRules};
use crm_ports::conformance::{all_follow_ups, tenant};
use crm_ports::{CampaignQuery, Store};
use serde_json::{Value, json};
use support::{copy_dir, dir_bytes};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/node");

fn rules() -> Arc<LegacyRules> {
    Arc::new(LegacyRules::new(Arc::new(Contracts::load().unwrap())))
}

fn open(dir: &Path) -> Result<FileStore, OpenError> {
    FileStore::open(
        dir,
        FileStoreOptions {
            legacy_rules: Some(rules()),
            ..FileStoreOptions::default()
        },
    )
}

fn node_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), dir.path());
    dir
}

fn items(name: &str) -> Vec<Value> {
    let file: Value =
        serde_json::from_slice(&fs::read(Path::new(FIXTURE).join(name)).unwrap()).unwrap();
    file["items"].as_array().unwrap().clone()
}

async fn campaigns_of(store: &dyn Store, tenant_name: &str) -> Vec<Campaign> {
    let query = CampaignQuery {
        tenant_id: tenant(tenant_name),
        state: None,
        limit: 1_000,
        after: None,
    };
    store.list_campaigns(&query).await.unwrap().items
}

async fn follow_ups_of(store: &dyn Store, tenant_name: &str) -> Vec<FollowUp> {
    all_follow_ups(store, &tenant(tenant_name)).await
}

/// Every field the Node.js service wrote is served unchanged.
async fn assert_adopted(store: &dyn Store) {
    let mut campaigns = campaigns_of(store, "tenant-node-a").await;
    campaigns.extend(campaigns_of(store, "tenant-node-b").await);
    let mut follow_ups = follow_ups_of(store, "tenant-node-a").await;
    follow_ups.extend(follow_ups_of(store, "tenant-node-b").await);
    let rules = rules();
    for original in items("campaigns.json") {
        let expected = rules.campaign(&original).unwrap();
        let stored = campaigns
            .iter()
            .find(|c| c.campaign_id == expected.campaign_id)
            .unwrap_or_else(|| panic!("campaign {} is missing", original["campaign_id"]));
        assert_eq!(stored, &expected);
    }
    for original in items("followups.json") {
        let mut expected = rules.follow_up(&original).unwrap();
        let stored = follow_ups
            .iter()
            .find(|f| f.followup_id == expected.followup_id)
            .unwrap_or_else(|| panic!("follow-up {} is missing", original["followup_id"]));
        if original.get("correlation_id").is_none_or(Value::is_null) {
            // Fresh ids, made once at adoption.
            expected.correlation_id = stored.correlation_id;
            expected.trace_id = stored.trace_id.clone();
        }
        assert_eq!(stored, &expected);
    }
    assert_eq!(campaigns.len(), 3);
    assert_eq!(follow_ups.len(), 3);
}

#[tokio::test]
async fn a_node_data_dir_is_adopted_with_every_record_and_its_originals_kept() {
    let dir = node_dir();
    let originals = dir_bytes(dir.path());

    let store = open(dir.path()).unwrap();

    assert_adopted(&store).await;
    assert_eq!(
        dir_bytes(&dir.path().join("node-backup")),
        originals,
        "the originals, byte for byte"
    );
    assert!(dir.path().join("manifest.json").exists());
    let stored = follow_ups_of(&store, "tenant-node-a").await;
    drop(store);
    let reopened = open(dir.path()).unwrap();
    assert_adopted(&reopened).await;
    assert_eq!(
        follow_ups_of(&reopened, "tenant-node-a").await,
        stored,
        "fresh trace ids are made once"
    );
}

#[tokio::test]
async fn the_dry_run_counts_what_would_be_adopted_and_changes_nothing() {
    let dir = node_dir();
    let before = dir_bytes(dir.path());

    let found = FileStore::check_adoption(dir.path(), &*rules()).unwrap();

    assert_eq!(
        found,
        AdoptionCheck::Adoptable {
            campaigns: 3,
            follow_ups: 3
        }
    );
    assert_eq!(dir_bytes(dir.path()), before);
    assert!(!dir.path().join(".lock").exists(), "not even a lock file");
    open(dir.path()).unwrap();
    assert_eq!(
        FileStore::check_adoption(dir.path(), &*rules()).unwrap(),
        AdoptionCheck::Nothing
    );
}

/// Writes the fixture with `change` applied to item `index` of `file`.
fn broken(file: &str, index: usize, change: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = node_dir();
    let mut records = items(file);
    change(&mut records[index]);
    let text = serde_json::to_string_pretty(&json!({ "items": records })).unwrap();
    fs::write(dir.path().join(file), text).unwrap();
    dir
}

#[tokio::test]
async fn each_broken_rule_refuses_the_dir_naming_the_record_and_leaves_it_as_it_was() {
    // (file, item, field, the value that breaks a rule)
    let cases = [
        ("campaigns.json", 1, "state", json!("archived")),
        ("followups.json", 2, "status", json!("queued")),
        ("followups.json", 0, "phone_e164", json!("5511999990001")),
        ("followups.json", 1, "created_at", json!("06/02/2025")),
        // An id another tenant's campaign has.
        (
            "campaigns.json",
            2,
            "campaign_id",
            json!("8d3c2f4e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"),
        ),
        // A key another campaign of the tenant has.
        ("campaigns.json", 1, "external_key", json!("spring-sale")),
        // A campaign of another tenant.
        (
            "followups.json",
            2,
            "campaign_id",
            json!("5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e"),
        ),
    ];
    for (file, index, name, value) in cases {
        let field = format!("/{name}");
        let field = field.as_str();
        let dir = broken(file, index, |record| record[name] = value);
        let before = dir_bytes(dir.path());

        let error = open(dir.path()).expect_err("refused");

        let OpenError::Refused { report, .. } = &error else {
            panic!("{file} {index} {field}: not a refusal: {error}");
        };
        let named: Vec<(&str, usize, &str)> = report
            .findings
            .iter()
            .map(|f| (f.origin.as_str(), f.index, f.field.as_str()))
            .collect();
        assert!(named.contains(&(file, index, field)), "{field}: {error}");
        assert_eq!(dir_bytes(dir.path()), before, "{field}: the dir changed");
        let entries: BTreeMap<String, bool> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.path().is_dir(),
                )
            })
            .collect();
        assert_eq!(
            entries.keys().map(String::as_str).collect::<Vec<_>>(),
            [".lock", "campaigns.json", "followups.json"],
            "{field}: nothing but the lock was added"
        );
        assert!(
            error.to_string().contains(&format!("{file} item {index}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_file_that_is_not_the_node_format_is_corrupt_and_named() {
    let dir = node_dir();
    fs::write(dir.path().join("followups.json"), "[1, 2, 3]").unwrap();

    let error = open(dir.path()).expect_err("refused").to_string();

    assert!(error.contains("followups.json"), "{error}");
}

#[tokio::test]
async fn without_the_rules_a_node_dir_is_refused_untouched() {
    let dir = node_dir();
    let before = dir_bytes(dir.path());

    let error = FileStore::open(dir.path(), FileStoreOptions::default()).expect_err("refused");

    assert!(error.to_string().contains("Node.js"), "{error}");
    assert_eq!(dir_bytes(dir.path()), before);
}

#[tokio::test]
async fn an_adoption_cut_short_before_its_commit_starts_over() {
    let dir = node_dir();
    let originals = dir_bytes(dir.path());
    // What a crash right after the backup and the first snapshot file leaves.
    fs::create_dir(dir.path().join("node-backup")).unwrap();
    fs::write(
        dir.path().join("node-backup/campaigns.json"),
        b"{\"items\": [",
    )
    .unwrap();
    fs::write(dir.path().join("node-backup/followups.json.tmp"), b"{").unwrap();
    fs::write(dir.path().join("campaigns.json.next"), b"garbage").unwrap();

    let store = open(dir.path()).unwrap();

    assert_adopted(&store).await;
    assert_eq!(dir_bytes(&dir.path().join("node-backup")), originals);
}
