//! Taking over the records of the earlier (Node.js) implementation of this service.
//!
//! A store adapter reads that implementation's records as JSON, each with where it came
//! from, and hands them to [`adopt`]: every record is checked by the [`RecordRules`] the
//! application gives (the same rules whichever store reads them), then the set as a whole
//! (ids unique across tenants, external keys unique per tenant, campaigns that
//! follow-ups name). Either every record is adopted or none is, with a report naming
//! each record that breaks a rule.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::TenantId;
use serde_json::Value;
use uuid::Uuid;

/// One record of the earlier implementation, as it was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRecord {
    /// Where it is: a file name or a table name.
    pub origin: String,
    /// Its position there, from 0.
    pub index: usize,
    pub json: Value,
}

/// What is wrong with one field of a record (`field` is a JSON pointer, `""` for the
/// record as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub reason: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One record that breaks a rule, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub origin: String,
    pub index: usize,
    /// The record's id, when it has a readable one.
    pub id: Option<String>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} item {}", self.origin, self.index)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        let field = if self.field.is_empty() {
            "the record"
        } else {
            &self.field
        };
        write!(f, ", {field}: {}", self.reason)
    }
}

/// The records of a refused adoption that break a rule, in the order they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionReport {
    pub findings: Vec<Finding>,
}

impl fmt::Display for AdoptionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} problem(s) in the records of the Node.js service:",
            self.findings.len()
        )?;
        for finding in &self.findings {
            write!(f, "\n  {finding}")?;
        }
        Ok(())
    }
}

/// Every record, converted; nothing refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adopted {
    pub campaigns: Vec<Campaign>,
    pub follow_ups: Vec<FollowUp>,
}

/// What a dry run of the adoption found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptionCheck {
    /// Nothing of the Node.js service to adopt (already adopted, or never there).
    Nothing,
    /// Every record passes: this many would be adopted.
    Adoptable { campaigns: usize, follow_ups: usize },
}

impl fmt::Display for AdoptionCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nothing => write!(f, "nothing of the Node.js service to adopt here"),
            Self::Adoptable {
                campaigns,
                follow_ups,
            } => write!(
                f,
                "every record passes: {campaigns} campaign(s) and {follow_ups} follow-up(s) \
                 will be adopted at the next start"
            ),
        }
    }
}

/// The rules one record must pass, and its conversion. Implemented by the application
/// (it knows the contracts); the stores only read and write.
pub trait RecordRules: Send + Sync {
    fn campaign(&self, json: &Value) -> Result<Campaign, Vec<FieldProblem>>;
    fn follow_up(&self, json: &Value) -> Result<FollowUp, Vec<FieldProblem>>;
}

/// Ids are global (one id under two tenants would answer for both) and external keys
/// unique per tenant. Each `((id, tenant, key), record)` is checked against those before
/// it; the first record to use an id or key keeps it. Returns each id's tenant.
fn unique<'a>(
    kind: &str,
    records: impl Iterator<Item = ((Uuid, &'a TenantId, Option<&'a str>), &'a LegacyRecord)>,
    found: &mut impl FnMut(&LegacyRecord, Option<String>, FieldProblem),
) -> HashMap<Uuid, &'a TenantId> {
    let id_field = if kind == "campaign" {
        "campaign_id"
    } else {
        "followup_id"
    };
    let mut owners: HashMap<Uuid, &TenantId> = HashMap::new();
    let mut keys: HashSet<(&TenantId, &str)> = HashSet::new();
    for ((id, tenant, key), record) in records {
        let named = Some(format!("{id_field} {id}"));
        match owners.entry(id) {
            Entry::Occupied(first) if *first.get() != tenant => found(
                record,
                named.clone(),
                FieldProblem::new(
                    format!("/{id_field}"),
                    format!("also used by tenant {}", first.get()),
                ),
            ),
            Entry::Occupied(_) => found(
                record,
                named.clone(),
                FieldProblem::new(format!("/{id_field}"), "appears twice"),
            ),
            Entry::Vacant(slot) => {
                slot.insert(tenant);
            }
        }
        if let Some(key) = key
            && !keys.insert((tenant, key))
        {
            found(
                record,
                named,
                FieldProblem::new(
                    "/external_key",
                    format!("{key:?} is another {kind}'s of this tenant"),
                ),
            );
        }
    }
    owners
}

/// Checks every record with `rules`, then the set as a whole.
pub fn adopt(
    campaigns: &[LegacyRecord],
    follow_ups: &[LegacyRecord],
    rules: &dyn RecordRules,
) -> Result<Adopted, AdoptionReport> {
    let mut findings = Vec::new();
    let mut adopted = Adopted::default();
    let id_of = |record: &LegacyRecord, field: &str| {
        record
            .json
            .get(field)
            .and_then(Value::as_str)
            .map(|id| format!("{field} {id}"))
    };
    let mut found = |record: &LegacyRecord, id: Option<String>, problem: FieldProblem| {
        findings.push(Finding {
            origin: record.origin.clone(),
            index: record.index,
            id,
            field: problem.field,
            reason: problem.reason,
        })
    };

    let mut campaign_at: Vec<&LegacyRecord> = Vec::new();
    for record in campaigns {
        match rules.campaign(&record.json) {
            Ok(campaign) => {
                adopted.campaigns.push(campaign);
                campaign_at.push(record);
            }
            Err(problems) => {
                for problem in problems {
                    found(record, id_of(record, "campaign_id"), problem);
                }
            }
        }
    }
    let mut follow_up_at: Vec<&LegacyRecord> = Vec::new();
    for record in follow_ups {
        match rules.follow_up(&record.json) {
            Ok(follow_up) => {
                adopted.follow_ups.push(follow_up);
                follow_up_at.push(record);
            }
            Err(problems) => {
                for problem in problems {
                    found(record, id_of(record, "followup_id"), problem);
                }
            }
        }
    }

    let campaign_ids = unique(
        "campaign",
        adopted
            .campaigns
            .iter()
            .zip(&campaign_at)
            .map(|(c, record)| {
                let identity = (
                    c.campaign_id.as_uuid(),
                    &c.tenant_id,
                    c.external_key.as_deref(),
                );
                (identity, *record)
            }),
        &mut found,
    );
    unique(
        "follow-up",
        adopted
            .follow_ups
            .iter()
            .zip(&follow_up_at)
            .map(|(f, record)| {
                let identity = (
                    f.followup_id.as_uuid(),
                    &f.tenant_id,
                    f.external_key.as_deref(),
                );
                (identity, *record)
            }),
        &mut found,
    );
    for (follow_up, record) in adopted.follow_ups.iter().zip(&follow_up_at) {
        let id = Some(format!("followup_id {}", follow_up.followup_id));
        if let Some(campaign_id) = follow_up.campaign_id
            && campaign_ids.get(&campaign_id.as_uuid()) != Some(&&follow_up.tenant_id)
        {
            found(
                record,
                id,
                FieldProblem::new("/campaign_id", "names no campaign of this tenant"),
            );
        }
    }
    if findings.is_empty() {
        Ok(adopted)
    } else {
        findings.sort_by(|a, b| (&a.origin, a.index).cmp(&(&b.origin, b.index)));
        Err(AdoptionReport { findings })
    }
}
