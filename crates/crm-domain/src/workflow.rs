//! Workflow files: named state machines loaded from JSON text, and the transition guard.
//!
//! A workflow file (`workflows/workflows.json`) holds many workflows; the campaign one is
//! just the workflow named `campaign`, so other modules reuse this code for theirs. The
//! file is data: it is parsed and checked, never evaluated. Reading the file from disk is
//! the caller's business.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// A parsed and checked workflow file.
#[derive(Debug, Clone)]
pub struct WorkflowSet {
    version: String,
    module: String,
    workflows: BTreeMap<String, Workflow>,
}

/// One named state machine: its states and the trigger that moves each allowed pair.
#[derive(Debug, Clone)]
pub struct Workflow {
    name: String,
    states: Vec<String>,
    initial_state: Option<String>,
    /// Keyed by `(from, to)`; the value is the trigger that must be named.
    transitions: HashMap<(String, String), String>,
}

/// Why a workflow file was refused. Each message names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("workflow file is not valid: {0}")]
    Malformed(String),
    #[error("workflow file has no workflow named {0:?}")]
    NoSuchWorkflow(String),
    #[error("workflow {workflow:?} has no states")]
    NoStates { workflow: String },
    #[error("workflow {workflow:?} lists state {state:?} twice")]
    DuplicateState { workflow: String, state: String },
    #[error(
        "workflow {workflow:?} transition #{index} ({from} -> {to}) names unknown state {state:?}"
    )]
    UnknownState {
        workflow: String,
        index: usize,
        from: String,
        to: String,
        state: String,
    },
    #[error("workflow {workflow:?} transition #{index} repeats {from} -> {to}")]
    DuplicateTransition {
        workflow: String,
        index: usize,
        from: String,
        to: String,
    },
    #[error("workflow {workflow:?} transition #{index} ({from} -> {to}) has an empty trigger")]
    EmptyTrigger {
        workflow: String,
        index: usize,
        from: String,
        to: String,
    },
    #[error("workflow {workflow:?} has initial state {state:?}, which is not one of its states")]
    UnknownInitialState { workflow: String, state: String },
}

/// What the guard allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// `to` equals the current state: a no-op, nothing is written and nothing emitted.
    Unchanged,
    /// The workflow has this pair and the trigger matches.
    Allowed,
}

/// Why the guard refused a transition; `code()` is the stable wire word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionRefusal {
    #[error("current state {state:?} is not in the workflow")]
    UnknownCurrentState { state: String },
    #[error("next state {state:?} is not in the workflow")]
    UnknownNextState { state: String },
    #[error("the workflow has no transition {from} -> {to}")]
    TransitionNotAllowed { from: String, to: String },
    #[error("a trigger is required")]
    MissingTrigger,
    #[error("trigger {trigger:?} does not move {from} -> {to}; expected {expected_trigger:?}")]
    TriggerMismatch {
        from: String,
        to: String,
        trigger: String,
        expected_trigger: String,
    },
}

impl TransitionRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownCurrentState { .. } => "unknown_current_state",
            Self::UnknownNextState { .. } => "unknown_next_state",
            Self::TransitionNotAllowed { .. } => "transition_not_allowed",
            Self::MissingTrigger => "missing_trigger",
            Self::TriggerMismatch { .. } => "trigger_mismatch",
        }
    }

    pub fn expected_trigger(&self) -> Option<&str> {
        match self {
            Self::TriggerMismatch {
                expected_trigger, ..
            } => Some(expected_trigger),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RawFile {
    version: String,
    module: String,
    workflows: BTreeMap<String, RawWorkflow>,
}

#[derive(Deserialize)]
struct RawWorkflow {
    states: Vec<String>,
    #[serde(default)]
    initial_state: Option<String>,
    #[serde(default)]
    transitions: Vec<RawTransition>,
}

#[derive(Deserialize)]
struct RawTransition {
    from: String,
    to: String,
    trigger: String,
}

impl WorkflowSet {
    /// Parses and checks a whole workflow file, refusing it at the first bad entry.
    pub fn parse(json_text: &str) -> Result<Self, WorkflowError> {
        let raw: RawFile = serde_json::from_str(json_text)
            .map_err(|error| WorkflowError::Malformed(error.to_string()))?;
        let workflows = raw
            .workflows
            .into_iter()
            .map(|(name, workflow)| Workflow::check(name.clone(), workflow).map(|w| (name, w)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            version: raw.version,
            module: raw.module,
            workflows,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workflows.keys().map(String::as_str)
    }

    pub fn workflow(&self, name: &str) -> Result<&Workflow, WorkflowError> {
        self.workflows
            .get(name)
            .ok_or_else(|| WorkflowError::NoSuchWorkflow(name.to_owned()))
    }
}

impl Workflow {
    fn check(name: String, raw: RawWorkflow) -> Result<Self, WorkflowError> {
        if raw.states.is_empty() {
            return Err(WorkflowError::NoStates { workflow: name });
        }
        for (index, state) in raw.states.iter().enumerate() {
            if raw.states[..index].contains(state) {
                return Err(WorkflowError::DuplicateState {
                    workflow: name,
                    state: state.clone(),
                });
            }
        }
        if let Some(initial) = &raw.initial_state
            && !raw.states.contains(initial)
        {
            return Err(WorkflowError::UnknownInitialState {
                workflow: name,
                state: initial.clone(),
            });
        }
        let mut transitions = HashMap::with_capacity(raw.transitions.len());
        for (index, transition) in raw.transitions.into_iter().enumerate() {
            let RawTransition { from, to, trigger } = transition;
            let unknown = [&from, &to]
                .into_iter()
                .find(|s| !raw.states.contains(s))
                .cloned();
            if let Some(state) = unknown {
                return Err(WorkflowError::UnknownState {
                    state,
                    workflow: name,
                    index,
                    from,
                    to,
                });
            }
            if trigger.trim().is_empty() {
                return Err(WorkflowError::EmptyTrigger {
                    workflow: name,
                    index,
                    from,
                    to,
                });
            }
            if transitions.contains_key(&(from.clone(), to.clone())) {
                return Err(WorkflowError::DuplicateTransition {
                    workflow: name,
                    index,
                    from,
                    to,
                });
            }
            transitions.insert((from, to), trigger);
        }
        Ok(Self {
            name,
            states: raw.states,
            initial_state: raw.initial_state,
            transitions,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn states(&self) -> &[String] {
        &self.states
    }

    pub fn initial_state(&self) -> Option<&str> {
        self.initial_state.as_deref()
    }

    pub fn has_state(&self, state: &str) -> bool {
        self.states.iter().any(|known| known == state)
    }

    /// The trigger that moves `from -> to`, if the workflow has that pair.
    pub fn trigger_for(&self, from: &str, to: &str) -> Option<&str> {
        self.transitions
            .get(&(from.to_owned(), to.to_owned()))
            .map(String::as_str)
    }

    /// The transition guard. Refusals are checked in the wire contract's order:
    /// unknown current state, unknown next state, (same state: no-op), pair not in the
    /// workflow, missing trigger, wrong trigger.
    pub fn guard(
        &self,
        from: &str,
        to: &str,
        trigger: Option<&str>,
    ) -> Result<Guard, TransitionRefusal> {
        if !self.has_state(from) {
            return Err(TransitionRefusal::UnknownCurrentState {
                state: from.to_owned(),
            });
        }
        if !self.has_state(to) {
            return Err(TransitionRefusal::UnknownNextState {
                state: to.to_owned(),
            });
        }
        if from == to {
            return Ok(Guard::Unchanged);
        }
        let Some(expected) = self.trigger_for(from, to) else {
            return Err(TransitionRefusal::TransitionNotAllowed {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        };
        let trigger = trigger.filter(|t| !t.is_empty());
        match trigger {
            None => Err(TransitionRefusal::MissingTrigger),
            Some(trigger) if trigger == expected => Ok(Guard::Allowed),
            Some(trigger) => Err(TransitionRefusal::TriggerMismatch {
                from: from.to_owned(),
                to: to.to_owned(),
                trigger: trigger.to_owned(),
                expected_trigger: expected.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
