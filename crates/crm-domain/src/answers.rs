//! What a provider's answer means: the table of error codes and the action each calls for.
//!
//! The table is data (`workflows/provider-answers.json`), parsed and checked here; what an
//! action does to an acknowledgement is decided in `delivery`. A code the table does not
//! list keeps the plain rule: the sender's `retryable` decides.

use std::collections::HashMap;

use serde::Deserialize;

/// What the service does when a sender reports a failed attempt with a listed code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// The item is done, failed; the follow-up's campaign, if running, is paused.
    PauseCampaign,
    /// The item is done, failed; the recipient joins the tenant's opt-out list.
    OptOut,
    /// The item is done, failed, whatever the sender's `retryable` says.
    Finish,
    /// The item is tried again, if attempts remain, no sooner than `not_before` says.
    Retry(NotBefore),
}

/// The least delay before a retry; the item's own backoff applies when it is longer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NotBefore {
    /// The item's backoff alone.
    Backoff,
    /// A fixed delay.
    Fixed { ms: u64 },
    /// The tenant's `recipient_min_interval_ms` (or `default_ms` when it sets none),
    /// times `growth` to the power of the attempts before this one.
    RecipientInterval { default_ms: u64, growth: u32 },
}

impl Action {
    /// Whether deciding this action needs the tenant's sending policy.
    pub fn needs_policy(&self) -> bool {
        matches!(self, Self::Retry(NotBefore::RecipientInterval { .. }))
    }
}

impl NotBefore {
    /// The least delay, in milliseconds, before the retry after attempt `attempt` (1 for
    /// the first), given the tenant's pair interval.
    pub fn delay_ms(&self, attempt: u32, recipient_interval_ms: Option<u32>) -> u64 {
        match *self {
            Self::Backoff => 0,
            Self::Fixed { ms } => ms,
            Self::RecipientInterval { default_ms, growth } => {
                let base = recipient_interval_ms.map_or(default_ms, u64::from);
                let exponent = attempt.saturating_sub(1).min(30);
                base.saturating_mul(u64::from(growth).saturating_pow(exponent))
            }
        }
    }
}

/// A parsed and checked table of answers.
#[derive(Debug, Clone, Default)]
pub struct ProviderAnswers {
    version: String,
    provider: String,
    actions: HashMap<String, Action>,
}

/// Why a table was refused; each message names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswersError {
    #[error("the table of answers is not valid: {0}")]
    Malformed(String),
    #[error("answer #{index} lists no code")]
    NoCodes { index: usize },
    #[error("code {code:?} is listed twice (answers #{first} and #{second})")]
    DuplicateCode {
        code: String,
        first: usize,
        second: usize,
    },
    #[error("answer #{index} ({action}) does not take {field:?}")]
    UnexpectedField {
        index: usize,
        action: &'static str,
        field: &'static str,
    },
    #[error("answer #{index}: not_before needs either ms or recipient_interval_default_ms")]
    AmbiguousDelay { index: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    provider: String,
    answers: Vec<RawAnswer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    codes: Vec<String>,
    /// For people reading the file; the service does not use it.
    #[serde(default, rename = "meaning")]
    _meaning: Option<String>,
    action: RawAction,
    #[serde(default)]
    not_before: Option<RawNotBefore>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawAction {
    PauseCampaign,
    OptOut,
    Finish,
    Retry,
}

impl RawAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::PauseCampaign => "pause_campaign",
            Self::OptOut => "opt_out",
            Self::Finish => "finish",
            Self::Retry => "retry",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotBefore {
    #[serde(default)]
    ms: Option<u64>,
    #[serde(default)]
    recipient_interval_default_ms: Option<u64>,
    #[serde(default)]
    growth: Option<u32>,
}

impl RawNotBefore {
    fn delay(&self, index: usize) -> Result<NotBefore, AnswersError> {
        match (self.ms, self.recipient_interval_default_ms) {
            (Some(ms), None) if self.growth.is_none() => Ok(NotBefore::Fixed { ms }),
            (None, Some(default_ms)) => Ok(NotBefore::RecipientInterval {
                default_ms,
                growth: self.growth.unwrap_or(1),
            }),
            _ => Err(AnswersError::AmbiguousDelay { index }),
        }
    }
}

impl ProviderAnswers {
    /// Parses and checks a table: every code listed once, delays only on retries.
    ///
    /// # Errors
    /// The first problem found, naming its entry.
    pub fn parse(text: &str) -> Result<Self, AnswersError> {
        let raw: RawTable = serde_json::from_str(text)
            .map_err(|error| AnswersError::Malformed(error.to_string()))?;
        let mut actions = HashMap::new();
        let mut listed_in: HashMap<String, usize> = HashMap::new();
        for (index, answer) in raw.answers.iter().enumerate() {
            if answer.codes.is_empty() {
                return Err(AnswersError::NoCodes { index });
            }
            let action = match (answer.action, &answer.not_before) {
                (RawAction::Retry, None) => Action::Retry(NotBefore::Backoff),
                (RawAction::Retry, Some(not_before)) => Action::Retry(not_before.delay(index)?),
                (other, Some(_)) => {
                    return Err(AnswersError::UnexpectedField {
                        index,
                        action: other.as_str(),
                        field: "not_before",
                    });
                }
                (RawAction::PauseCampaign, None) => Action::PauseCampaign,
                (RawAction::OptOut, None) => Action::OptOut,
                (RawAction::Finish, None) => Action::Finish,
            };
            for code in &answer.codes {
                if let Some(first) = listed_in.insert(code.clone(), index) {
                    return Err(AnswersError::DuplicateCode {
                        code: code.clone(),
                        first,
                        second: index,
                    });
                }
                actions.insert(code.clone(), action);
            }
        }
        Ok(Self {
            version: raw.version,
            provider: raw.provider,
            actions,
        })
    }

    /// The action a code calls for; `None` for a code the table does not list.
    pub fn action(&self, error_code: Option<&str>) -> Option<Action> {
        error_code.and_then(|code| self.actions.get(code).copied())
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How many codes the table lists.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"{
      "version": "1.0.0",
      "provider": "whatsapp",
      "answers": [
        { "codes": ["131048", "132015"], "action": "pause_campaign" },
        { "codes": ["131050"], "action": "opt_out" },
        { "codes": ["131026"], "action": "finish" },
        { "codes": ["131049"], "action": "retry", "not_before": { "ms": 86400000 } },
        { "codes": ["131056"], "action": "retry",
          "not_before": { "recipient_interval_default_ms": 6000, "growth": 4 } },
        { "codes": ["130429"], "action": "retry" }
      ]
    }"#;

    #[test]
    fn each_listed_code_has_its_action_and_others_have_none() {
        let table = ProviderAnswers::parse(TABLE).unwrap();
        assert_eq!(table.action(Some("132015")), Some(Action::PauseCampaign));
        assert_eq!(table.action(Some("131050")), Some(Action::OptOut));
        assert_eq!(table.action(Some("131026")), Some(Action::Finish));
        assert_eq!(
            table.action(Some("131049")),
            Some(Action::Retry(NotBefore::Fixed { ms: 86_400_000 }))
        );
        assert_eq!(
            table.action(Some("130429")),
            Some(Action::Retry(NotBefore::Backoff))
        );
        assert_eq!(table.action(Some("999")), None);
        assert_eq!(table.action(None), None);
        assert_eq!(table.len(), 7);
    }

    #[test]
    fn the_pair_rate_delay_grows_fourfold_per_attempt_from_the_tenant_interval() {
        let table = ProviderAnswers::parse(TABLE).unwrap();
        let Some(Action::Retry(delay)) = table.action(Some("131056")) else {
            panic!("131056 retries");
        };
        assert_eq!(delay.delay_ms(1, None), 6_000);
        assert_eq!(delay.delay_ms(2, None), 24_000);
        assert_eq!(delay.delay_ms(3, Some(1_000)), 16_000);
        assert_eq!(delay.delay_ms(200, Some(86_400_000)), u64::MAX);
        assert!(table.action(Some("131056")).unwrap().needs_policy());
        assert!(!table.action(Some("131049")).unwrap().needs_policy());
    }

    #[test]
    fn a_code_listed_twice_is_refused_naming_both_entries() {
        let text = r#"{"version": "1", "provider": "p", "answers": [
            {"codes": ["1"], "action": "finish"}, {"codes": ["2", "1"], "action": "opt_out"}]}"#;
        assert_eq!(
            ProviderAnswers::parse(text).unwrap_err(),
            AnswersError::DuplicateCode {
                code: "1".into(),
                first: 0,
                second: 1
            }
        );
    }

    #[test]
    fn a_delay_on_an_action_that_does_not_retry_is_refused() {
        let text = r#"{"version": "1", "provider": "p", "answers": [
            {"codes": ["1"], "action": "finish", "not_before": {"ms": 5}}]}"#;
        assert!(matches!(
            ProviderAnswers::parse(text),
            Err(AnswersError::UnexpectedField { index: 0, .. })
        ));
        let both = r#"{"version": "1", "provider": "p", "answers": [
            {"codes": ["1"], "action": "retry",
             "not_before": {"ms": 5, "recipient_interval_default_ms": 6}}]}"#;
        assert_eq!(
            ProviderAnswers::parse(both).unwrap_err(),
            AnswersError::AmbiguousDelay { index: 0 }
        );
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        for text in [
            r#"{"version": "1", "provider": "p", "answers": [{"codes": ["1"], "action": "explode"}]}"#,
            r#"{"version": "1", "provider": "p", "answers": [{"codes": ["1"], "action": "finish", "x": 1}]}"#,
            r#"{"version": "1", "provider": "p", "answers": [{"codes": [], "action": "finish"}]}"#,
            "[]",
        ] {
            assert!(ProviderAnswers::parse(text).is_err(), "{text}");
        }
    }
}
