use super::*;

const TINY: &str = r#"{"version": "1", "module": "test", "workflows": {
  "door": {"states": ["open", "closed", "locked"], "initial_state": "open",
           "transitions": [{"from": "open", "to": "closed", "trigger": "close"},
                           {"from": "closed", "to": "open", "trigger": "open"},
                           {"from": "closed", "to": "locked", "trigger": "lock"}]}}}"#;

fn door() -> Workflow {
    WorkflowSet::parse(TINY)
        .unwrap()
        .workflow("door")
        .unwrap()
        .clone()
}

/// Runs the guard and returns its outcome as the wire word (`ok`, `unchanged` or a code).
fn check(from: &str, to: &str, trigger: Option<&str>, expected: &str) {
    let outcome = match door().guard(from, to, trigger) {
        Ok(Guard::Allowed) => "ok",
        Ok(Guard::Unchanged) => "unchanged",
        Err(refusal) => refusal.code(),
    };
    assert_eq!(outcome, expected, "{from} -> {to} with {trigger:?}");
}

fn refusal_of(json_text: &str) -> WorkflowError {
    WorkflowSet::parse(json_text).expect_err("the file should be refused")
}

fn file_with(workflow_json: &str) -> String {
    format!(r#"{{"version": "1", "module": "test", "workflows": {{"w": {workflow_json}}}}}"#)
}

#[test]
fn a_listed_pair_with_its_trigger_is_allowed() {
    check("open", "closed", Some("close"), "ok");
    check("closed", "locked", Some("lock"), "ok");
}

#[test]
fn the_same_state_is_an_unchanged_no_op_even_without_a_trigger() {
    check("closed", "closed", None, "unchanged");
}

#[test]
fn an_unknown_current_state_is_checked_before_everything_else() {
    check("ajar", "nowhere", None, "unknown_current_state");
}

#[test]
fn an_unknown_next_state_is_checked_before_the_no_op() {
    check("open", "nowhere", Some("close"), "unknown_next_state");
}

#[test]
fn a_pair_missing_from_the_workflow_is_not_allowed_whatever_the_trigger() {
    check("open", "locked", Some("lock"), "transition_not_allowed");
    check("open", "locked", None, "transition_not_allowed");
}

#[test]
fn an_allowed_pair_without_a_trigger_is_missing_its_trigger() {
    check("open", "closed", None, "missing_trigger");
    check("open", "closed", Some(""), "missing_trigger");
}

#[test]
fn a_wrong_trigger_names_the_expected_one() {
    let refusal = door().guard("open", "closed", Some("slam")).unwrap_err();
    assert_eq!(refusal.code(), "trigger_mismatch");
    assert_eq!(refusal.expected_trigger(), Some("close"));
}

#[test]
fn an_unknown_workflow_name_is_refused_by_name() {
    let set = WorkflowSet::parse(TINY).unwrap();
    assert_eq!(
        set.workflow("window").unwrap_err(),
        WorkflowError::NoSuchWorkflow("window".into())
    );
}

#[test]
fn text_that_is_not_a_workflow_file_is_malformed() {
    assert!(matches!(refusal_of("{"), WorkflowError::Malformed(_)));
    assert!(matches!(
        refusal_of(r#"{"version": "1", "module": "m"}"#),
        WorkflowError::Malformed(_)
    ));
}

#[test]
fn a_transition_to_an_unknown_state_is_refused_naming_the_entry() {
    let error = refusal_of(&file_with(
        r#"{"states": ["a", "b"], "transitions": [{"from": "a", "to": "b", "trigger": "go"}, {"from": "b", "to": "c", "trigger": "go"}]}"#,
    ));
    assert_eq!(
        error,
        WorkflowError::UnknownState {
            workflow: "w".into(),
            index: 1,
            from: "b".into(),
            to: "c".into(),
            state: "c".into()
        }
    );
    assert!(
        error.to_string().contains("transition #1 (b -> c)"),
        "{error}"
    );
}

#[test]
fn a_transition_from_an_unknown_state_is_refused() {
    let error = refusal_of(&file_with(
        r#"{"states": ["a"], "transitions": [{"from": "x", "to": "a", "trigger": "go"}]}"#,
    ));
    assert!(matches!(error, WorkflowError::UnknownState { state, .. } if state == "x"));
}

#[test]
fn a_repeated_pair_is_refused() {
    let error = refusal_of(&file_with(
        r#"{"states": ["a", "b"], "transitions": [{"from": "a", "to": "b", "trigger": "go"}, {"from": "a", "to": "b", "trigger": "run"}]}"#,
    ));
    assert!(matches!(
        error,
        WorkflowError::DuplicateTransition { index: 1, .. }
    ));
}

#[test]
fn an_empty_or_blank_trigger_is_refused() {
    for trigger in ["", "  "] {
        let error = refusal_of(&file_with(&format!(
            r#"{{"states": ["a", "b"], "transitions": [{{"from": "a", "to": "b", "trigger": "{trigger}"}}]}}"#
        )));
        assert!(
            matches!(error, WorkflowError::EmptyTrigger { index: 0, .. }),
            "{error}"
        );
    }
}

#[test]
fn a_workflow_without_states_is_refused() {
    let error = refusal_of(&file_with(r#"{"states": [], "transitions": []}"#));
    assert_eq!(
        error,
        WorkflowError::NoStates {
            workflow: "w".into()
        }
    );
}

#[test]
fn a_state_listed_twice_is_refused() {
    let error = refusal_of(&file_with(r#"{"states": ["a", "a"], "transitions": []}"#));
    assert!(matches!(error, WorkflowError::DuplicateState { state, .. } if state == "a"));
}

#[test]
fn an_initial_state_outside_the_states_is_refused() {
    let error = refusal_of(&file_with(
        r#"{"states": ["a"], "initial_state": "z", "transitions": []}"#,
    ));
    assert!(matches!(error, WorkflowError::UnknownInitialState { state, .. } if state == "z"));
}

#[test]
fn every_file_in_the_workflows_folder_loads() {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows");
    let mut loaded = 0;
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            // The table of provider answers lives beside the workflows, as data too.
            if path.ends_with("provider-answers.json") {
                crate::answers::ProviderAnswers::parse(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                WorkflowSet::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "no workflow file found in {folder}");
}

#[test]
fn the_production_file_serves_other_modules_workflows_by_name() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../workflows/workflows.json"
    ))
    .unwrap();
    let set = WorkflowSet::parse(&text).unwrap();
    let collection = set.workflow("collection_messaging").unwrap();
    assert_eq!(
        collection.guard("failed", "queued", Some("retry_eligible")),
        Ok(Guard::Allowed)
    );
    assert_eq!(
        collection.trigger_for("requested", "queued"),
        Some("enqueue_message")
    );
}
